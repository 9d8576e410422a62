/**
 * rs2p for Node.js: js2p 0.7's API (base, mesh, sync) on rs2p's engine.
 *
 *     const { base, mesh, sync, flags } = require('rs2p');
 */

"use strict";

const base = require('./base.js');
const mesh = require('./mesh.js');
const sync = require('./sync.js');

module.exports = {
    base,
    mesh,
    sync,
    flags: base.flags,
    version: base.version,
    version_info: base.version_info
};
