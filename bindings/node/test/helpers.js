"use strict";

// Test helpers: waiting for conditions with deadlines (no fixed sleeps),
// and the repository's paths.

const net = require('net');
const path = require('path');

const ROOT = path.resolve(__dirname, '..', '..', '..');

/**
 * Resolves once `cond()` is truthy (polled every `every` ms); rejects with
 * `what` after `ms`.
 */
function waitFor(what, cond, ms = 10000, every = 10) {
    const deadline = Date.now() + ms;
    return new Promise((resolve, reject) => {
        const tick = () => {
            let v;
            try {
                v = cond();
            }
            catch (e) {
                reject(e);
                return;
            }
            if (v) {
                resolve(v);
            }
            else if (Date.now() >= deadline) {
                reject(new Error(`timed out after ${ms} ms waiting for: ${what}`));
            }
            else {
                setTimeout(tick, every);
            }
        };
        tick();
    });
}

/** Resolves with the first emission of `event` (its arguments); rejects after `ms`. */
function nextEvent(emitter, event, ms = 10000) {
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            emitter.removeListener(event, on);
            reject(new Error(`timed out after ${ms} ms waiting for event ${event}`));
        }, ms);
        const on = (...args) => {
            clearTimeout(timer);
            resolve(args);
        };
        emitter.once(event, on);
    });
}

/** Resolves true when a TCP connection to 127.0.0.1:port is refused. */
function refused(port) {
    return new Promise((resolve) => {
        const s = net.connect(port, '127.0.0.1');
        s.once('connect', () => {
            s.destroy();
            resolve(false);
        });
        s.once('error', () => resolve(true));
    });
}

/** Closes every socket given, ignoring ones already closed. */
function closeAll(...socks) {
    for (const s of socks.flat()) {
        if (s) {
            s.close();
        }
    }
}

module.exports = { ROOT, waitFor, nextEvent, refused, closeAll };
