//! Events from the engine to Node's event loop.
//!
//! The engine's tasks (and the actor, for received messages) push events
//! into an [`Outbox`]; that never waits. The first event pushed into an empty
//! outbox queues one call of a threadsafe function; when Node's event loop
//! runs it, the whole batch waiting by then goes to JavaScript as one array.
//! So there is at most one call queued per node, whatever the event rate,
//! and the events themselves are bounded by [`MAX_PENDING`]: past it the
//! oldest are dropped and the next batch starts with a `lagged` event giving
//! their count.

use std::collections::VecDeque;
use std::ptr;
use std::sync::{Arc, Mutex, MutexGuard};

use napi::bindgen_prelude::{External, ToNapiValue, Unknown};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Result, Status};
use rs2p::{Message, Value};

use crate::convert::{create_buffer, to_js};

/// Events kept for JavaScript before the oldest are dropped.
pub const MAX_PENDING: usize = 1 << 18;

/// The JavaScript callback: called with one argument, the batch.
pub type Callback = ThreadsafeFunction<Batch, Unknown<'static>, Batch, Status, false>;

/// Something for JavaScript.
#[derive(Debug)]
pub enum Event {
    /// The first peer joined an empty routing table (`'connect'`).
    Connect,
    /// A user message no protocol rule consumed.
    Message(Message),
    /// A key was set or merged into (`'update'`).
    Update {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Value,
        /// The writer's id.
        owner: Vec<u8>,
        /// The write's time, unix seconds.
        timestamp: i64,
    },
    /// A key was deleted (`'delete'`).
    Delete {
        /// The key.
        key: Vec<u8>,
    },
    /// Something failed in the background (a dial).
    Error(String),
}

#[derive(Default)]
struct Pending {
    events: VecDeque<Event>,
    /// Events dropped since the last batch.
    missed: u64,
    /// A call of the callback is queued and has not taken the events yet.
    scheduled: bool,
    /// The node is closed: events are dropped.
    closed: bool,
}

/// Where the engine leaves events for one node.
pub struct Outbox {
    pending: Mutex<Pending>,
    callback: Mutex<Option<Callback>>,
    max: usize,
}

impl Outbox {
    /// An outbox delivering to `callback`.
    pub fn new(callback: Callback) -> Arc<Outbox> {
        Outbox::with_limit(Some(callback), MAX_PENDING)
    }

    fn with_limit(callback: Option<Callback>, max: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            pending: Mutex::new(Pending::default()),
            callback: Mutex::new(callback),
            max,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event; never waits for JavaScript.
    pub fn push(self: &Arc<Self>, event: Event) {
        let schedule = {
            let mut p = self.lock();
            if p.closed {
                return;
            }
            if p.events.len() >= self.max {
                p.events.pop_front();
                p.missed += 1;
            }
            p.events.push_back(event);
            !std::mem::replace(&mut p.scheduled, true)
        };
        if schedule {
            self.schedule();
        }
    }

    /// Counts events lost before they reached the outbox (the engine's
    /// event stream lagged); the next batch starts with their count.
    pub fn missed(self: &Arc<Self>, n: u64) {
        let schedule = {
            let mut p = self.lock();
            if p.closed {
                return;
            }
            p.missed = p.missed.saturating_add(n);
            !std::mem::replace(&mut p.scheduled, true)
        };
        if schedule {
            self.schedule();
        }
    }

    /// Queues one call of the callback.
    fn schedule(self: &Arc<Self>) {
        let cb = self.callback.lock().unwrap_or_else(|e| e.into_inner());
        match cb.as_ref() {
            Some(cb) => {
                let status = cb.call(Batch(self.clone()), ThreadsafeFunctionCallMode::NonBlocking);
                if status != Status::Ok {
                    // The environment is going away: nothing will run.
                    self.lock().scheduled = false;
                }
            }
            None => self.lock().scheduled = false,
        }
    }

    /// Releases the callback, so that it no longer keeps Node's event loop
    /// alive; later events are dropped.
    pub fn shut(&self) {
        let cb = self
            .callback
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(cb);
        let mut p = self.lock();
        p.closed = true;
        p.events.clear();
    }

    /// Takes what is waiting: the count of dropped events and the events.
    fn take(&self) -> (u64, VecDeque<Event>) {
        let mut p = self.lock();
        p.scheduled = false;
        (std::mem::take(&mut p.missed), std::mem::take(&mut p.events))
    }
}

/// The argument of one callback call: converted to a JavaScript array of
/// events on Node's thread, when the call runs. Each event is an array whose
/// first element names it: `['connect']`, `['message', handle, packets,
/// sender, time, id, msg_type]`, `['update', key, value, owner, timestamp]`,
/// `['delete', key]`, `['lagged', count]`, `['error', message]`.
pub struct Batch(Arc<Outbox>);

unsafe fn string(env: sys::napi_env, s: &str) -> Result<sys::napi_value> {
    unsafe { to_js(env, &Value::Str(s.to_owned())) }
}

unsafe fn number(env: sys::napi_env, n: f64) -> Result<sys::napi_value> {
    unsafe { to_js(env, &Value::F64(n)) }
}

unsafe fn array(env: sys::napi_env, items: &[sys::napi_value]) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    let status = unsafe { sys::napi_create_array_with_length(env, items.len(), &mut out) };
    if status != sys::Status::napi_ok {
        return Err(napi::Error::new(Status::from(status), "creating an array"));
    }
    for (i, item) in items.iter().enumerate() {
        let status = unsafe { sys::napi_set_element(env, out, i as u32, *item) };
        if status != sys::Status::napi_ok {
            return Err(napi::Error::new(Status::from(status), "filling an array"));
        }
    }
    Ok(out)
}

unsafe fn event_to_js(env: sys::napi_env, ev: Event) -> Result<sys::napi_value> {
    unsafe {
        match ev {
            Event::Connect => array(env, &[string(env, "connect")?]),
            Event::Message(m) => {
                let packets = to_js(env, &Value::Array(m.packets().to_vec()))?;
                let sender = string(env, &m.sender())?;
                let time = number(env, m.time() as f64)?;
                let id = create_buffer(env, &m.id())?;
                let kind = number(env, if m.is_broadcast() { 0.0 } else { 2.0 })?;
                let handle = ToNapiValue::to_napi_value(env, External::new(m))?;
                array(
                    env,
                    &[
                        string(env, "message")?,
                        handle,
                        packets,
                        sender,
                        time,
                        id,
                        kind,
                    ],
                )
            }
            Event::Update {
                key,
                value,
                owner,
                timestamp,
            } => array(
                env,
                &[
                    string(env, "update")?,
                    create_buffer(env, &key)?,
                    to_js(env, &value)?,
                    string(env, &String::from_utf8_lossy(&owner))?,
                    number(env, timestamp as f64)?,
                ],
            ),
            Event::Delete { key } => {
                array(env, &[string(env, "delete")?, create_buffer(env, &key)?])
            }
            Event::Error(msg) => array(env, &[string(env, "error")?, string(env, &msg)?]),
        }
    }
}

impl ToNapiValue for Batch {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let (missed, events) = val.0.take();
        let mut items = Vec::with_capacity(events.len() + 1);
        unsafe {
            if missed > 0 {
                items.push(array(
                    env,
                    &[string(env, "lagged")?, number(env, missed as f64)?],
                )?);
            }
            for ev in events {
                items.push(event_to_js(env, ev)?);
            }
            array(env, &items)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_the_oldest_past_the_limit_and_counts_them() {
        let outbox = Outbox::with_limit(None, 3);
        for i in 0..5u8 {
            outbox.push(Event::Delete { key: vec![i] });
        }
        let (missed, events) = outbox.take();
        assert_eq!(missed, 2);
        let keys: Vec<Vec<u8>> = events
            .into_iter()
            .map(|e| match e {
                Event::Delete { key } => key,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(keys, vec![vec![2], vec![3], vec![4]]);
        let (missed, events) = outbox.take();
        assert_eq!((missed, events.len()), (0, 0));
        outbox.missed(5);
        outbox.missed(2);
        assert_eq!(outbox.take().0, 7);
    }

    #[test]
    fn a_shut_outbox_keeps_nothing() {
        let outbox = Outbox::with_limit(None, 3);
        outbox.push(Event::Connect);
        outbox.shut();
        outbox.push(Event::Connect);
        assert_eq!(outbox.take().1.len(), 0);
    }
}
