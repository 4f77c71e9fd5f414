//! A pending request's changelog state written straight to its JSON bytes: the bytes
//! msgspec writes for the dict `worker.join_state.export_state` builds, in its key
//! order, with its numbers and escapes (`deps`, the same for every state of a table,
//! comes encoded by Python). The exactly-once commit writes one per request still
//! open; building the dicts and encoding them cost about 7 µs a request, most of what
//! capturing a commit spent on the loop.
//!
//! A value this does not cover (a string that is not valid UTF-8, a number of another
//! type than the events hold) makes `write_state` return false: Python builds it.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyFloat, PyInt, PyString};

use crate::{write_f64, write_i64, write_str};

/// The times of a pending request, in the state's key order; `first_ts` None: its
/// first member's `ts`.
pub struct Times {
    pub opened_ms: i64,
    pub deadline_ms: i64,
    pub first_ts: Option<i64>,
}

/// `{"v":1,"request_id":…,"opened_ms":…,"deadline_ms":…,"first_ts":…,"members":{…}}`
/// with `members` the (model name, event) pairs in arrival order, then `"deps":` and
/// `deps` (its JSON) if there is one; false (and `out` in any state) where Python must
/// build it.
pub fn write_state(
    py: Python<'_>,
    out: &mut Vec<u8>,
    rid: &Bound<'_, PyString>,
    times: &Times,
    members: &[(&Bound<'_, PyString>, Bound<'_, PyAny>)],
    deps: Option<&[u8]>,
) -> PyResult<bool> {
    out.extend_from_slice(b"{\"v\":1,\"request_id\":");
    if !string(out, rid) {
        return Ok(false);
    }
    out.extend_from_slice(b",\"opened_ms\":");
    write_i64(out, times.opened_ms);
    out.extend_from_slice(b",\"deadline_ms\":");
    write_i64(out, times.deadline_ms);
    out.extend_from_slice(b",\"first_ts\":");
    let first_ts = match times.first_ts {
        Some(ts) => Some(ts),
        None => int(&members[0].1.getattr(intern!(py, "ts"))?),
    };
    let Some(first_ts) = first_ts else {
        return Ok(false);
    };
    write_i64(out, first_ts);
    out.extend_from_slice(b",\"members\":{");
    for (i, (model, event)) in members.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if !string(out, model) {
            return Ok(false);
        }
        out.push(b':');
        if !write_event(py, out, event)? {
            return Ok(false);
        }
    }
    out.push(b'}');
    if let Some(deps) = deps {
        out.extend_from_slice(b",\"deps\":");
        out.extend_from_slice(deps);
    }
    out.push(b'}');
    Ok(true)
}

/// One member as `worker.join_state._event_state` has it: `ts`, then its prediction
/// (`probs`, `label`, `text` and `confidence`, else `score`), then the optional strings.
fn write_event(py: Python<'_>, out: &mut Vec<u8>, ev: &Bound<'_, PyAny>) -> PyResult<bool> {
    out.extend_from_slice(b"{\"ts\":");
    let Some(ts) = int(&ev.getattr(intern!(py, "ts"))?) else {
        return Ok(false);
    };
    write_i64(out, ts);
    // Read in turn: an event's other predictions are class attributes (None), each a
    // slower lookup than its own field.
    let written = if let Some(probs) = some(ev.getattr(intern!(py, "probs"))?) {
        out.extend_from_slice(b",\"probs\":");
        packed_floats(out, &probs)
    } else if let Some(label) = some(ev.getattr(intern!(py, "label"))?) {
        out.extend_from_slice(b",\"label\":");
        int(&label).map(|x| write_i64(out, x)).is_some()
    } else if let Some(text) = some(ev.getattr(intern!(py, "text"))?) {
        out.extend_from_slice(b",\"text\":");
        let ok = string_of(out, &text);
        match some(ev.getattr(intern!(py, "confidence"))?) {
            None => ok,
            Some(confidence) => {
                out.extend_from_slice(b",\"confidence\":");
                ok && float(out, &confidence)
            }
        }
    } else {
        out.extend_from_slice(b",\"score\":");
        match some(ev.getattr(intern!(py, "score"))?) {
            None => {
                out.extend_from_slice(b"null");
                true
            }
            Some(score) => float(out, &score),
        }
    };
    if !written {
        return Ok(false);
    }
    for name in [
        intern!(py, "model_version"),
        intern!(py, "trace_id"),
        intern!(py, "traceparent"),
    ] {
        let value = ev.getattr(name)?;
        if value.is_none() {
            continue;
        }
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.to_str()?.as_bytes());
        out.extend_from_slice(b"\":");
        if !string_of(out, &value) {
            return Ok(false);
        }
    }
    out.push(b'}');
    Ok(true)
}

fn some(value: Bound<'_, PyAny>) -> Option<Bound<'_, PyAny>> {
    (!value.is_none()).then_some(value)
}

fn string(out: &mut Vec<u8>, s: &Bound<'_, PyString>) -> bool {
    match s.to_str() {
        Ok(text) => {
            write_str(out, text);
            true
        }
        Err(_) => false,
    }
}

fn string_of(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> bool {
    value
        .downcast_exact::<PyString>()
        .is_ok_and(|s| string(out, s))
}

/// An int (not a bool, which msgspec writes as `true`) that fits an i64.
fn int(value: &Bound<'_, PyAny>) -> Option<i64> {
    value.downcast_exact::<PyInt>().ok()?.extract().ok()
}

/// A float (an int would be written without its `.0` by msgspec).
fn float(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> bool {
    match value.downcast_exact::<PyFloat>() {
        Ok(x) => {
            write_f64(out, x.value());
            true
        }
        Err(_) => false,
    }
}

/// Packed float64 `probs` (native order, `worker.events.pack_probs`) as a JSON list.
fn packed_floats(out: &mut Vec<u8>, value: &Bound<'_, PyAny>) -> bool {
    let Ok(raw) = value.downcast_exact::<PyBytes>() else {
        return false;
    };
    let raw = raw.as_bytes();
    if raw.len() % 8 != 0 {
        return false;
    }
    out.push(b'[');
    for (i, chunk) in raw.chunks_exact(8).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_f64(out, f64::from_ne_bytes(chunk.try_into().expect("8 bytes")));
    }
    out.push(b']');
    true
}
