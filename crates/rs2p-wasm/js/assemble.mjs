// Assembles the browser bundle from wasm-bindgen's outputs and shell.js
// (run by scripts/build-wasm.sh):
//
//   node assemble.mjs WORK OUT
//
// WORK holds web/ (wasm-bindgen --target web) and classic/ (--target
// no-modules) for the same module; OUT receives rs2p.wasm, rs2p.js (a
// classic script defining the global `rs2p`) and rs2p.mjs (an ES module with
// the same exports, for browsers and Node). The output depends only on its
// inputs, so a rebuild can be compared byte for byte.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const [work, out] = process.argv.slice(2);
if (!work || !out) {
    console.error("usage: node assemble.mjs WORK OUT");
    process.exit(2);
}
const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..", "..", "..");
const version = (readFileSync(join(root, "Cargo.toml"), "utf8").match(/\[workspace\.package\][^[]*?\nversion = "([^"]+)"/) || [])[1];
if (!version) throw new Error("no workspace version in Cargo.toml");

/**
 * `text` without its whole-line comments (`/** ... *\/` blocks and `//`
 * lines) and leading indentation: a page downloads the bundle, its readers
 * have shell.js and the crate's docs. Only whole lines go, so code and
 * strings are untouched; a template literal spanning lines (whose lines
 * this would change) is refused.
 */
function strip(text) {
    const code = text
        // A block ends at its first "*/", which must end its line.
        .replace(/^[ \t]*\/\*\*(?:(?!\*\/)[\s\S])*\*\/[ \t]*\n/gm, "")
        .replace(/^[ \t]*\/\/.*\n/gm, "");
    // A template literal spanning lines opens on a code line with an odd
    // number of backticks.
    for (const line of code.split("\n")) {
        if ((line.split("`").length - 1) % 2 !== 0) {
            throw new Error(`a template literal spans lines; strip() would change it: ${line}`);
        }
    }
    return code.replace(/^[ \t]+/gm, "");
}

const wasm = readFileSync(join(work, "web", "rs2p_wasm_bg.wasm"));
const tag = createHash("sha256").update(wasm).digest("hex").slice(0, 16);
const shell = strip(readFileSync(join(here, "shell.js"), "utf8").replace("__RS2P_VERSION__", version));

/** Replaces `from` by `to` in `text`, exactly `count` times. */
function edit(text, from, to, count = 1) {
    const parts = text.split(from);
    if (parts.length - 1 !== count) {
        throw new Error(`wasm-bindgen glue changed: ${JSON.stringify(from)} found ${parts.length - 1} times, expected ${count}`);
    }
    return parts.join(to);
}

const header = (kind) =>
    `// rs2p ${version}: a p2p-today 0.7 sync node in WebAssembly, with js2p's browser API (${kind}).\n` +
    `// Built by scripts/build-wasm.sh from crates/rs2p-wasm; do not edit. Module ${tag}.\n`;

// ----- the ES module: the web glue without its exports, then the shell.
let glue = readFileSync(join(work, "web", "rs2p_wasm.js"), "utf8");
const exported = glue.match(/^export (class|function) \w+/gm) || [];
for (const e of exported) glue = edit(glue, "\n" + e, "\n" + e.slice("export ".length));
glue = edit(glue, "export { initSync, __wbg_init as default };", "");
if (/^export /m.test(glue)) throw new Error("wasm-bindgen glue has exports this script does not know");
glue = strip(glue);
const mjs = `${header("ES module")}${glue}
${shell}
const wasmUrl = new URL("rs2p.wasm?${tag}", import.meta.url);
let source = wasmUrl;
if (wasmUrl.protocol === "file:") {
    // Node: read the module beside this file (fetch cannot read files).
    const fs = await import("node:fs/promises");
    source = await fs.readFile(new URL("rs2p.wasm", import.meta.url));
}
await __wbg_init({ module_or_path: source });
const api = rs2pShell({ Core, protocolId }, () => true);
/** The base module: Protocol, EventEmitter, version. */
export const base = api.base;
/** The sync module: SyncSocket. */
export const sync = api.sync;
/** The rs2p version. */
export const version = api.version;
/** Resolves at once: the module is loaded before it is imported. */
export const ready = Promise.resolve(api);
export default api;
`;

// ----- the classic script: the no-modules glue inside a function.
const classicGlue = strip(readFileSync(join(work, "classic", "rs2p_wasm.js"), "utf8"));
if (!/^let wasm_bindgen/m.test(classicGlue)) throw new Error("wasm-bindgen no-modules glue changed");
const js = `${header("classic script; defines the global rs2p")}(function (root) {
"use strict";
const script = typeof document !== "undefined" ? document.currentScript : null;
const base = script && script.src ? script.src : (typeof location !== "undefined" ? location.href : "");
${classicGlue}
${shell}
let loaded = false;
const api = rs2pShell(wasm_bindgen, () => loaded);
/** Resolves to the rs2p object once its WebAssembly module is loaded. */
api.ready = wasm_bindgen({ module_or_path: new URL("rs2p.wasm?${tag}", base) }).then(() => {
    loaded = true;
    return api;
});
root.rs2p = api;
})(typeof globalThis !== "undefined" ? globalThis : self);
`;

writeFileSync(join(out, "rs2p.wasm"), wasm);
writeFileSync(join(out, "rs2p.mjs"), mjs);
writeFileSync(join(out, "rs2p.js"), js);
