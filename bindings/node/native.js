"use strict";

// The addon built from bindings/node/src by build.sh (cargo build, copied
// here as rs2p.node).
let native;
try {
    native = require('./rs2p.node');
}
catch (e) {
    const err = new Error(`rs2p: the native addon is missing or does not load (${e.message}); ` +
        'build it with bindings/node/build.sh (or npm install in bindings/node)');
    err.cause = e;
    throw err;
}

module.exports = native;
