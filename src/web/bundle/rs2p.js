// rs2p 0.1.0: a p2p-today 0.7 sync node in WebAssembly, with js2p's browser API (classic script; defines the global rs2p).
// Built by scripts/build-wasm.sh from crates/rs2p-wasm; do not edit. Module b0d79789acf70ac7.
(function (root) {
"use strict";
const script = typeof document !== "undefined" ? document.currentScript : null;
const base = script && script.src ? script.src : (typeof location !== "undefined" ? location.href : "");
let wasm_bindgen = (function(exports) {
let script_src;
if (typeof document !== 'undefined' && document.currentScript !== null) {
script_src = new URL(document.currentScript.src, location.href).toString();
}

class Core {
__destroy_into_raw() {
const ptr = this.__wbg_ptr;
this.__wbg_ptr = 0;
CoreFinalization.unregister(this);
return ptr;
}
free() {
const ptr = this.__destroy_into_raw();
wasm.__wbg_core_free(ptr, 0);
}
applyDelta(key, delta) {
const ret = wasm.core_applyDelta(this.__wbg_ptr, key, delta);
if (ret[2]) {
throw takeFromExternrefTable0(ret[1]);
}
return takeFromExternrefTable0(ret[0]);
}
closed(conn, reason) {
const val2 = +conn;
const ptr0 = passStringToWasm0(reason, wasm.__wbindgen_malloc, wasm.__wbindgen_realloc);
const len0 = WASM_VECTOR_LEN;
const ret = wasm.core_closed(this.__wbg_ptr, val2, ptr0, len0);
return ret;
}
connect(host, port) {
const val2 = +port;
const ptr0 = passStringToWasm0(host, wasm.__wbindgen_malloc, wasm.__wbindgen_realloc);
const len0 = WASM_VECTOR_LEN;
const ret = wasm.core_connect(this.__wbg_ptr, ptr0, len0, val2);
if (ret[2]) {
throw takeFromExternrefTable0(ret[1]);
}
return takeFromExternrefTable0(ret[0]);
}
del(key) {
const ret = wasm.core_del(this.__wbg_ptr, key);
if (ret[2]) {
throw takeFromExternrefTable0(ret[1]);
}
return takeFromExternrefTable0(ret[0]);
}
failed(conn) {
const ret = wasm.core_failed(this.__wbg_ptr, conn);
return ret;
}
get(key) {
const ret = wasm.core_get(this.__wbg_ptr, key);
if (ret[2]) {
throw takeFromExternrefTable0(ret[1]);
}
return takeFromExternrefTable0(ret[0]);
}
has(key) {
const ret = wasm.core_has(this.__wbg_ptr, key);
if (ret[2]) {
throw takeFromExternrefTable0(ret[1]);
}
return ret[0] !== 0;
}
get id() {
let deferred1_0;
let deferred1_1;
try {
const ret = wasm.core_id(this.__wbg_ptr);
deferred1_0 = ret[0];
deferred1_1 = ret[1];
return getStringFromWasm0(ret[0], ret[1]);
} finally {
wasm.__wbindgen_free(deferred1_0, deferred1_1, 1);
}
}
keys() {
const ret = wasm.core_keys(this.__wbg_ptr);
return ret;
}
get leasing() {
const ret = wasm.core_leasing(this.__wbg_ptr);
return ret !== 0;
}
meta(key) {
const ret = wasm.core_meta(this.__wbg_ptr, key);
if (ret[2]) {
throw takeFromExternrefTable0(ret[1]);
}
return takeFromExternrefTable0(ret[0]);
}
constructor(subnet, transport, leasing, random, host) {
const val4 = +leasing;
let ptr0, len0, ptr1, len1, ptr2, len2;
try {
ptr0 = passStringToWasm0(subnet, wasm.__wbindgen_malloc, wasm.__wbindgen_realloc);
len0 = WASM_VECTOR_LEN;
ptr1 = passStringToWasm0(transport, wasm.__wbindgen_malloc, wasm.__wbindgen_realloc);
len1 = WASM_VECTOR_LEN;
ptr2 = passArray8ToWasm0(random, wasm.__wbindgen_malloc);
len2 = WASM_VECTOR_LEN;
} catch (e) {
if (ptr2) { wasm.__wbindgen_free(ptr2, len2 * 1, 1); }
if (ptr1) { wasm.__wbindgen_free(ptr1, len1 * 1, 1); }
if (ptr0) { wasm.__wbindgen_free(ptr0, len0 * 1, 1); }
throw e;
}
const ret = wasm.core_new(ptr0, len0, ptr1, len1, val4, ptr2, len2, host);
if (ret[2]) {
throw takeFromExternrefTable0(ret[1]);
}
this.__wbg_ptr = ret[0];
CoreFinalization.register(this, this.__wbg_ptr, this);
return this;
}
opened(conn) {
const ret = wasm.core_opened(this.__wbg_ptr, conn);
return ret;
}
peers() {
const ret = wasm.core_peers(this.__wbg_ptr);
return ret;
}
get protocolId() {
let deferred1_0;
let deferred1_1;
try {
const ret = wasm.core_protocolId(this.__wbg_ptr);
deferred1_0 = ret[0];
deferred1_1 = ret[1];
return getStringFromWasm0(ret[0], ret[1]);
} finally {
wasm.__wbindgen_free(deferred1_0, deferred1_1, 1);
}
}
received(conn, bytes) {
const val2 = +conn;
const ptr0 = passArray8ToWasm0(bytes, wasm.__wbindgen_malloc);
const len0 = WASM_VECTOR_LEN;
const ret = wasm.core_received(this.__wbg_ptr, val2, ptr0, len0);
return ret;
}
set(key, value) {
const ret = wasm.core_set(this.__wbg_ptr, key, value);
if (ret[2]) {
throw takeFromExternrefTable0(ret[1]);
}
return takeFromExternrefTable0(ret[0]);
}
get size() {
const ret = wasm.core_size(this.__wbg_ptr);
return ret >>> 0;
}
stats() {
const ret = wasm.core_stats(this.__wbg_ptr);
return ret;
}
timeout() {
const ret = wasm.core_timeout(this.__wbg_ptr);
return ret;
}
}
if (Symbol.dispose) Core.prototype[Symbol.dispose] = Core.prototype.free;
exports.Core = Core;

function protocolId(subnet, transport) {
let deferred3_0;
let deferred3_1;
try {
let ptr0, len0, ptr1, len1;
try {
ptr0 = passStringToWasm0(subnet, wasm.__wbindgen_malloc, wasm.__wbindgen_realloc);
len0 = WASM_VECTOR_LEN;
ptr1 = passStringToWasm0(transport, wasm.__wbindgen_malloc, wasm.__wbindgen_realloc);
len1 = WASM_VECTOR_LEN;
} catch (e) {
if (ptr1) { wasm.__wbindgen_free(ptr1, len1 * 1, 1); }
if (ptr0) { wasm.__wbindgen_free(ptr0, len0 * 1, 1); }
throw e;
}
const ret = wasm.protocolId(ptr0, len0, ptr1, len1);
deferred3_0 = ret[0];
deferred3_1 = ret[1];
return getStringFromWasm0(ret[0], ret[1]);
} finally {
wasm.__wbindgen_free(deferred3_0, deferred3_1, 1);
}
}
exports.protocolId = protocolId;
function __wbg_get_imports() {
const import0 = {
__proto__: null,
__wbg___wbindgen_bigint_get_as_i64_11da4b52cd0aedef: function(arg0, arg1) {
const v = arg1;
const ret = typeof(v) === 'bigint' ? v : undefined;
getDataViewMemory0().setBigInt64((arg0 >>> 0) + 8 * 1, isLikeNone(ret) ? BigInt(0) : ret, true);
getDataViewMemory0().setInt32((arg0 >>> 0) + 4 * 0, !isLikeNone(ret), true);
},
__wbg___wbindgen_boolean_get_4f1baf9a00be3c74: function(arg0) {
const v = arg0;
const ret = typeof(v) === 'boolean' ? v : undefined;
return isLikeNone(ret) ? 0xFFFFFF : ret ? 1 : 0;
},
__wbg___wbindgen_is_bigint_5fa10641e039d3ef: function(arg0) {
const ret = typeof(arg0) === 'bigint';
return ret;
},
__wbg___wbindgen_is_function_741ff2bb612836f5: function(arg0) {
const ret = typeof(arg0) === 'function';
return ret;
},
__wbg___wbindgen_is_null_c22311b1cc228e3a: function(arg0) {
const ret = arg0 === null;
return ret;
},
__wbg___wbindgen_is_object_8b968c3ab8e96595: function(arg0) {
const val = arg0;
const ret = typeof(val) === 'object' && val !== null;
return ret;
},
__wbg___wbindgen_is_undefined_be5b34249ff1fc15: function(arg0) {
const ret = arg0 === undefined;
return ret;
},
__wbg___wbindgen_jsval_eq_38d7bfbe4cc84039: function(arg0, arg1) {
const ret = arg0 === arg1;
return ret;
},
__wbg___wbindgen_number_get_934b640d0889af78: function(arg0, arg1) {
const obj = arg1;
const ret = typeof(obj) === 'number' ? obj : undefined;
getDataViewMemory0().setFloat64((arg0 >>> 0) + 8 * 1, isLikeNone(ret) ? 0 : ret, true);
getDataViewMemory0().setInt32((arg0 >>> 0) + 4 * 0, !isLikeNone(ret), true);
},
__wbg___wbindgen_shr_692b534b32c7458f: function(arg0, arg1) {
const ret = arg0 >> arg1;
return ret;
},
__wbg___wbindgen_string_get_7ce8eee7fd327545: function(arg0, arg1) {
const obj = arg1;
const ret = typeof(obj) === 'string' ? obj : undefined;
var ptr1 = isLikeNone(ret) ? 0 : passStringToWasm0(ret, wasm.__wbindgen_malloc, wasm.__wbindgen_realloc);
var len1 = WASM_VECTOR_LEN;
getDataViewMemory0().setInt32((arg0 >>> 0) + 4 * 1, len1, true);
getDataViewMemory0().setInt32((arg0 >>> 0) + 4 * 0, ptr1, true);
},
__wbg___wbindgen_throw_4c88d8bf264fd984: function(arg0, arg1) {
throw new Error(getStringFromWasm0(arg0, arg1));
},
__wbg___wbindgen_typeof_ee4990276e02f607: function(arg0) {
const ret = typeof arg0;
return ret;
},
__wbg_close_8e74748992c2c82a: function(arg0, arg1) {
arg0.close(arg1);
},
__wbg_dial_b665a357134757af: function(arg0, arg1, arg2, arg3, arg4) {
arg0.dial(arg1, getStringFromWasm0(arg2, arg3), arg4);
},
__wbg_done_57e08d0be6e30c02: function(arg0) {
const ret = arg0.done;
return ret;
},
__wbg_entries_54196278ac45dd71: function(arg0) {
const ret = arg0.entries();
return ret;
},
__wbg_entries_7bb1459bd9b5c2b9: function(arg0) {
const ret = Object.entries(arg0);
return ret;
},
__wbg_fromEntries_d7c8cd4202f2bba8: function() { return handleError(function (arg0) {
const ret = Object.fromEntries(arg0);
return ret;
}, arguments); },
__wbg_get_d7176cfb76d71114: function(arg0, arg1) {
const ret = arg0[arg1 >>> 0];
return ret;
},
__wbg_get_unchecked_e6325ad374eff861: function(arg0, arg1) {
const ret = arg0[arg1 >>> 0];
return ret;
},
__wbg_instanceof_ArrayBuffer_12cdaa4161423e6b: function(arg0) {
let result;
try {
result = arg0 instanceof ArrayBuffer;
} catch (_) {
result = false;
}
const ret = result;
return ret;
},
__wbg_instanceof_Map_0b4fc8b62e73f163: function(arg0) {
let result;
try {
result = arg0 instanceof Map;
} catch (_) {
result = false;
}
const ret = result;
return ret;
},
__wbg_instanceof_Uint8Array_d7aeb0dcb3108fea: function(arg0) {
let result;
try {
result = arg0 instanceof Uint8Array;
} catch (_) {
result = false;
}
const ret = result;
return ret;
},
__wbg_isArray_bcf1376d0d732d08: function(arg0) {
const ret = Array.isArray(arg0);
return ret;
},
__wbg_length_186163212ffe79c3: function(arg0) {
const ret = arg0.length;
return ret;
},
__wbg_length_b03a0fabb109b1e9: function(arg0) {
const ret = arg0.length;
return ret;
},
__wbg_new_13de428334042d26: function(arg0) {
const ret = new Uint8Array(arg0);
return ret;
},
__wbg_new_37eb45aaf5eeb820: function() {
const ret = new Array();
return ret;
},
__wbg_new_4416a2fe2fac9c65: function(arg0, arg1) {
const ret = new TypeError(getStringFromWasm0(arg0, arg1));
return ret;
},
__wbg_new_7075786089b89c5e: function() {
const ret = new Map();
return ret;
},
__wbg_new_787b9fb330d55d78: function(arg0, arg1) {
const ret = new Error(getStringFromWasm0(arg0, arg1));
return ret;
},
__wbg_new_from_slice_b8daf545a41c6aa0: function(arg0, arg1) {
const ret = new Uint8Array(getArrayU8FromWasm0(arg0, arg1));
return ret;
},
__wbg_next_af5ac6a08bb0a717: function() { return handleError(function (arg0) {
const ret = arg0.next();
return ret;
}, arguments); },
__wbg_now_463ac581d2fc7ea3: function() {
const ret = Date.now();
return ret;
},
__wbg_now_ead62a1e0ed0ca9e: function(arg0) {
const ret = arg0.now();
return ret;
},
__wbg_of_e7ea0fcd535c1444: function(arg0, arg1) {
const ret = Array.of(arg0, arg1);
return ret;
},
__wbg_prototypesetcall_13162965d1fe7aa3: function(arg0, arg1, arg2) {
Uint8Array.prototype.set.call(getArrayU8FromWasm0(arg0, arg1), arg2);
},
__wbg_push_c9f4893fc209f768: function(arg0, arg1) {
const ret = arg0.push(arg1);
return ret;
},
__wbg_queued_e86349e39ff4ae50: function(arg0, arg1) {
const ret = arg0.queued(arg1);
return ret;
},
__wbg_send_5b432ece34f5d67d: function(arg0, arg1, arg2, arg3) {
arg0.send(arg1, getArrayU8FromWasm0(arg2, arg3));
},
__wbg_set_2793479888329cb6: function() { return handleError(function (arg0, arg1, arg2) {
const ret = Reflect.set(arg0, arg1, arg2);
return ret;
}, arguments); },
__wbg_set_8282f7e0d2d01336: function(arg0, arg1, arg2) {
const ret = arg0.set(arg1, arg2);
return ret;
},
__wbg_set_name_822e3903f3184979: function(arg0, arg1, arg2) {
arg0.name = getStringFromWasm0(arg1, arg2);
},
__wbg_size_9729f8eed378bf8e: function(arg0) {
const ret = arg0.size;
return ret;
},
__wbg_timer_adee5cafecfeb0df: function(arg0, arg1) {
arg0.timer(arg1);
},
__wbg_value_e0f328965e184931: function(arg0) {
const ret = arg0.value;
return ret;
},
__wbindgen_generic_0000000000000001: function(arg0) {
const ret = arg0;
return ret;
},
__wbindgen_generic_0000000000000002: function(arg0, arg1) {
const ret = (BigInt.asUintN(64, arg0) | (arg1 << BigInt(64)));
return ret;
},
__wbindgen_generic_0000000000000003: function(arg0) {
const ret = arg0;
return ret;
},
__wbindgen_generic_0000000000000004: function(arg0, arg1) {
const ret = getStringFromWasm0(arg0, arg1);
return ret;
},
__wbindgen_generic_0000000000000005: function(arg0) {
const ret = BigInt.asUintN(64, arg0);
return ret;
},
__wbindgen_init_externref_table: function() {
const table = wasm.__wbindgen_externrefs;
table.set(0, undefined);
table.set(1024, undefined);
table.set(1025, null);
table.set(1026, true);
table.set(1027, false);
},
};
return {
__proto__: null,
"./rs2p_wasm_bg.js": import0,
};
}

const CoreFinalization = (typeof FinalizationRegistry === 'undefined')
? { register: () => {}, unregister: () => {} }
: new FinalizationRegistry(ptr => wasm.__wbg_core_free(ptr, 1));

function addToExternrefTable0(obj) {
const idx = wasm.__externref_table_alloc();
wasm.__wbindgen_externrefs.set(idx, obj);
return idx;
}

function getArrayU8FromWasm0(ptr, len) {
ptr = ptr >>> 0;
return getUint8ArrayMemory0().subarray(ptr / 1, ptr / 1 + len);
}

let cachedDataViewMemory0 = null;
function getDataViewMemory0() {
if (cachedDataViewMemory0 === null || cachedDataViewMemory0.buffer.detached === true || (cachedDataViewMemory0.buffer.detached === undefined && cachedDataViewMemory0.buffer !== wasm.memory.buffer)) {
cachedDataViewMemory0 = new DataView(wasm.memory.buffer);
}
return cachedDataViewMemory0;
}

function getStringFromWasm0(ptr, len) {
ptr = ptr >>> 0;
return decodeText(getUint8ArrayMemory0().subarray(ptr, ptr + len));
}

let cachedUint8ArrayMemory0 = null;
function getUint8ArrayMemory0() {
if (cachedUint8ArrayMemory0 === null || cachedUint8ArrayMemory0.byteLength === 0) {
cachedUint8ArrayMemory0 = new Uint8Array(wasm.memory.buffer);
}
return cachedUint8ArrayMemory0;
}

function handleError(f, args) {
try {
return f.apply(this, args);
} catch (e) {
const idx = addToExternrefTable0(e);
wasm.__wbindgen_exn_store(idx);
}
}

function isLikeNone(x) {
return x === undefined || x === null;
}

function passArray8ToWasm0(arg, malloc) {
const ptr = malloc(arg.length * 1, 1) >>> 0;
getUint8ArrayMemory0().set(arg, ptr / 1);
WASM_VECTOR_LEN = arg.length;
return ptr;
}

function passStringToWasm0(arg, malloc, realloc) {
if (realloc === undefined) {
const buf = cachedTextEncoder.encode(arg);
const ptr = malloc(buf.length, 1) >>> 0;
getUint8ArrayMemory0().subarray(ptr, ptr + buf.length).set(buf);
WASM_VECTOR_LEN = buf.length;
return ptr;
}

let len = arg.length;
let ptr = malloc(len, 1) >>> 0;

const mem = getUint8ArrayMemory0();

let offset = 0;

for (; offset < len; offset++) {
const code = arg.charCodeAt(offset);
if (code > 0x7F) break;
mem[ptr + offset] = code;
}
if (offset !== len) {
if (offset !== 0) {
arg = arg.slice(offset);
}
ptr = realloc(ptr, len, len = offset + arg.length * 3, 1) >>> 0;
const view = getUint8ArrayMemory0().subarray(ptr + offset, ptr + len);
const ret = cachedTextEncoder.encodeInto(arg, view);

offset += ret.written;
ptr = realloc(ptr, len, offset, 1) >>> 0;
}

WASM_VECTOR_LEN = offset;
return ptr;
}

function takeFromExternrefTable0(idx) {
const value = wasm.__wbindgen_externrefs.get(idx);
wasm.__externref_table_dealloc(idx);
return value;
}

let cachedTextDecoder = new TextDecoder('utf-8', { ignoreBOM: true });
cachedTextDecoder.decode();
function decodeText(bytes) {
return cachedTextDecoder.decode(bytes);
}

const cachedTextEncoder = new TextEncoder();

if (!('encodeInto' in cachedTextEncoder)) {
cachedTextEncoder.encodeInto = function (arg, view) {
const buf = cachedTextEncoder.encode(arg);
view.set(buf);
return {
read: arg.length,
written: buf.length
};
};
}

let WASM_VECTOR_LEN = 0;

let wasmModule, wasmInstance, wasm;
function __wbg_finalize_init(instance, module) {
wasmInstance = instance;
wasm = instance.exports;
wasmModule = module;
cachedDataViewMemory0 = null;
cachedUint8ArrayMemory0 = null;
wasm.__wbindgen_start();
return wasm;
}

async function __wbg_load(module, imports) {
if (typeof Response === 'function' && module instanceof Response) {
if (!module.ok) {
throw new Error(`failed to fetch Wasm: ${module.status} ${module.statusText} fetching '${module.url}'`);
}

if (typeof WebAssembly.instantiateStreaming === 'function') {
try {
return await WebAssembly.instantiateStreaming(module, imports);
} catch (e) {
const validResponse = expectedResponseType(module.type);

if (validResponse && module.headers.get('Content-Type') !== 'application/wasm') {
console.warn("`WebAssembly.instantiateStreaming` failed because your server does not serve Wasm with `application/wasm` MIME type. Falling back to `WebAssembly.instantiate` which is slower. Original error:\n", e);

} else { throw e; }
}
}

const bytes = await module.arrayBuffer();
return await WebAssembly.instantiate(bytes, imports);
} else {
const instance = await WebAssembly.instantiate(module, imports);

if (instance instanceof WebAssembly.Instance) {
return { instance, module };
} else {
return instance;
}
}

function expectedResponseType(type) {
switch (type) {
case 'basic': case 'cors': case 'default': return true;
}
return false;
}
}

function initSync(module) {
if (wasm !== undefined) return wasm;


if (module !== undefined) {
if (Object.getPrototypeOf(module) === Object.prototype) {
({module} = module)
} else {
console.warn('using deprecated parameters for `initSync()`; pass a single object instead')
}
}

const imports = __wbg_get_imports();
if (!(module instanceof WebAssembly.Module)) {
module = new WebAssembly.Module(module);
}
const instance = new WebAssembly.Instance(module, imports);
return __wbg_finalize_init(instance, module);
}

let __wbg_init_promise;
async function __wbg_init(module_or_path) {
if (wasm !== undefined) return wasm;
if (__wbg_init_promise === undefined) {
__wbg_init_promise = __wbg_init_once(module_or_path);
__wbg_init_promise.catch(() => { __wbg_init_promise = undefined; });
}
return __wbg_init_promise;
}

async function __wbg_init_once(module_or_path) {

if (module_or_path !== undefined) {
if (Object.getPrototypeOf(module_or_path) === Object.prototype) {
({module_or_path} = module_or_path)
} else {
console.warn('using deprecated parameters for the initialization function; pass a single object instead')
}
}

if (module_or_path === undefined && script_src !== undefined) {
module_or_path = script_src.replace(/\.js$/, "_bg.wasm");
}
const imports = __wbg_get_imports();

if (typeof module_or_path === 'string' || (typeof Request === 'function' && module_or_path instanceof Request) || (typeof URL === 'function' && module_or_path instanceof URL)) {
module_or_path = fetch(module_or_path);
}

const { instance, module } = await __wbg_load(await module_or_path, imports);

return __wbg_finalize_init(instance, module);
}

return Object.assign(__wbg_init, { initSync }, exports);
})({ __proto__: null });

function rs2pShell(wasm, isLoaded) {
"use strict";
const VERSION = "0.1.0";

function notLoaded() {
return new Error("rs2p: the WebAssembly module is not loaded yet (wait for rs2p.ready)");
}

function report(err) {
setTimeout(() => { throw err; }, 0);
}

class EventEmitter {
constructor() { this._listeners = new Map(); }
on(name, fn) {
if (typeof fn !== "function") throw new TypeError("rs2p: a listener is a function");
const list = this._listeners.get(name) || [];
list.push(fn);
this._listeners.set(name, list);
return this;
}
addListener(name, fn) { return this.on(name, fn); }
once(name, fn) {
const wrapped = (...args) => { this.off(name, wrapped); fn.apply(this, args); };
wrapped.listener = fn;
return this.on(name, wrapped);
}
off(name, fn) {
const list = this._listeners.get(name);
if (list) {
const i = list.findIndex((f) => f === fn || f.listener === fn);
if (i >= 0) list.splice(i, 1);
}
return this;
}
removeListener(name, fn) { return this.off(name, fn); }
removeAllListeners(name) {
if (name === undefined) this._listeners.clear(); else this._listeners.delete(name);
return this;
}
listenerCount(name) { return (this._listeners.get(name) || []).length; }
emit(name, ...args) {
const list = this._listeners.get(name);
if (!list || list.length === 0) return false;
for (const fn of list.slice()) {
try { fn.apply(this, args); } catch (e) { report(e); }
}
return true;
}
}

class Protocol {
constructor(subnet, encryption) {
this.subnet = subnet === undefined || subnet === null ? "" : String(subnet);
this.encryption = encryption === undefined ? "ws" : String(encryption);
}
get id() {
if (!isLoaded()) throw notLoaded();
return wasm.protocolId(this.subnet, this.encryption);
}
}

function randomBytes(n) {
const c = globalThis.crypto;
if (!c || typeof c.getRandomValues !== "function") {
throw new Error("rs2p: crypto.getRandomValues is not available");
}
return c.getRandomValues(new Uint8Array(n));
}

function bracket(host) {
return host.includes(":") && !host.startsWith("[") ? "[" + host + "]" : host;
}

class SyncSocket extends EventEmitter {
constructor(addr, port, protocolOrLeasing, leasingOrProtocol) {
super();
if (!isLoaded()) throw notLoaded();
if ((addr !== null && addr !== undefined) || (port !== null && port !== undefined)) {
throw new TypeError("rs2p: a browser node cannot listen: pass null, null as addr and port");
}
let protocol = null;
let leasing = true;
for (const x of [protocolOrLeasing, leasingOrProtocol]) {
if (x === undefined || x === null) continue;
if (typeof x === "boolean") leasing = x;
else if (typeof x === "object" && typeof x.subnet === "string") protocol = x;
else throw new TypeError("rs2p: expected a Protocol or a boolean (leasing), got " + typeof x);
}
protocol = protocol || new Protocol("sync", "ws");
if (protocol.encryption !== "ws") {
throw new TypeError("rs2p: a browser node speaks 'ws' only, not '" + protocol.encryption + "'");
}
this._conns = new Map();
this._timer = null;
this._closed = false;
this._errors = [];
const self = this;
const host = {
send(conn, bytes) {
const ws = self._conns.get(conn);
if (ws && ws.readyState === 1) {
try { ws.send(bytes.slice()); } catch (e) { /* a close follows */ }
}
},
dial(conn, h, p) { self._dial(conn, h, p); },
close(conn) {
const ws = self._conns.get(conn);
self._conns.delete(conn);
if (ws) { try { ws.close(); } catch (e) { /* already closed */ } }
},
queued(conn) {
const ws = self._conns.get(conn);
return ws ? (ws.bufferedAmount || 0) : -1;
},
timer(delay) {
if (self._timer !== null) clearTimeout(self._timer);
self._timer = delay < 0 ? null : setTimeout(() => {
self._timer = null;
self._input("timeout");
}, Math.min(delay, 0x7fffffff));
},
now() { return performance.now(); },
};
this._core = new wasm.Core(protocol.subnet, protocol.encryption, leasing, randomBytes(56), host);
this.protocol = new Protocol(protocol.subnet + (leasing ? "1" : "0"), "ws");
this.leasing = leasing;
}

get id() { return this._core.id; }

get routing_table() {
const table = new Map();
if (this._closed) return table;
for (const p of this._core.peers()) table.set(p.id, p);
return table;
}

get status() { return this._errors.length ? this._errors.slice() : "Nominal"; }

get size() { return this._closed ? 0 : this._core.size; }

stats() { return this._core.stats(); }

connect(addr, port) {
this._check();
this._call("connect", String(addr), Number(port));
}

get(key, fallback) {
this._check();
const v = this._core.get(key);
return v === undefined ? fallback : v;
}

has(key) { this._check(); return this._core.has(key); }

metadata(key) { this._check(); return this._core.meta(key); }

set(key, value) {
this._check();
this._call("set", key, value === undefined ? null : value);
}

del(key) { this._check(); this._call("del", key); }

apply_delta(key, delta) { this._check(); this._call("applyDelta", key, delta); }

update(pairs) {
const entries = pairs instanceof Map ? pairs.entries() : Object.entries(pairs);
for (const [k, v] of entries) this.set(k, v);
}

*keys() {
if (this._closed) return;
yield* this._core.keys();
}

*values() {
for (const k of this.keys()) {
const v = this._core.get(k);
if (v !== undefined) yield v;
}
}

*items() {
for (const k of this.keys()) {
const v = this._core.get(k);
if (v !== undefined) yield [k, v];
}
}

pop(key, fallback) {
this._check();
const v = this._core.get(key);
if (v === undefined) return fallback;
this.del(key);
return v;
}

popitem() {
for (const k of this.keys()) return [k, this.pop(k)];
return undefined;
}

close() {
if (this._closed) return;
this._closed = true;
if (this._timer !== null) clearTimeout(this._timer);
this._timer = null;
for (const ws of this._conns.values()) {
try { ws.close(); } catch (e) { /* already closed */ }
}
this._conns.clear();
const core = this._core;
this._core = null;
try { core.free(); } catch (e) { /* freed */ }
}

_check() {
if (this._closed) throw new Error("rs2p: the socket is closed");
}

_dial(conn, h, p) {
const WS = SyncSocket.WebSocket || globalThis.WebSocket;
let ws;
try {
ws = new WS("ws://" + bracket(h) + ":" + p + "/");
} catch (e) {
queueMicrotask(() => this._input("failed", conn));
return;
}
ws.binaryType = "arraybuffer";
let open = false;
this._conns.set(conn, ws);
ws.onopen = () => {
if (this._conns.get(conn) !== ws) return;
open = true;
this._input("opened", conn);
};
ws.onmessage = (ev) => {
if (this._conns.get(conn) !== ws) return;
const data = typeof ev.data === "string" ? new TextEncoder().encode(ev.data) : new Uint8Array(ev.data);
this._input("received", conn, data);
};
ws.onclose = (ev) => {
if (this._conns.get(conn) !== ws) return;
this._conns.delete(conn);
if (open) this._input("closed", conn, "WebSocket closed (" + ev.code + ")");
else this._input("failed", conn);
};
ws.onerror = () => { /* a close follows */ };
}

_call(method, ...args) {
let events;
try {
events = this._core[method](...args);
} catch (e) {
if (typeof WebAssembly !== "undefined" && e instanceof WebAssembly.RuntimeError) {
this._errors.push(e);
this.close(); // the core's state is unknown after a trap
}
throw e;
}
this._dispatch(events);
}

_input(method, ...args) {
if (this._closed) return;
let events;
try {
events = this._core[method](...args);
} catch (e) {
this._errors.push(e);
const trapped = typeof WebAssembly !== "undefined" && e instanceof WebAssembly.RuntimeError;
if (trapped) this.close(); // the core's state is unknown after a trap
this.emit("error", this, e);
return;
}
this._dispatch(events);
}

_dispatch(events) {
for (const ev of events) {
switch (ev[0]) {
case "update": this.emit("update", this, ev[1], ev[2], ev[3]); break;
case "delete": this.emit("delete", this, ev[1]); break;
case "connect": this.emit("connect", this); break;
case "peer": this.emit("peer", this, ev[1], ev[2]); break;
case "peer_left": this.emit("peer_left", this, ev[1]); break;
default: break;
}
}
}
}
SyncSocket.WebSocket = null;

const base = { Protocol, EventEmitter, version: VERSION };
const sync = { SyncSocket, default_protocol: new Protocol("sync", "ws") };
return { base, sync, version: VERSION };
}

let loaded = false;
const api = rs2pShell(wasm_bindgen, () => loaded);
/** Resolves to the rs2p object once its WebAssembly module is loaded. */
api.ready = wasm_bindgen({ module_or_path: new URL("rs2p.wasm?b0d79789acf70ac7", base) }).then(() => {
    loaded = true;
    return api;
});
root.rs2p = api;
})(typeof globalThis !== "undefined" ? globalThis : self);
