//! fusion-worker's compiled hot path: a fused batch of classification results written
//! straight to their JSON bytes, with the counts the metrics take from them (here), the
//! common event decoded (`decode.rs`), the join's memory of fused ids (`fused.rs`), the
//! members packed for the fusion (`pack.rs`), output keys partitioned (`partition.rs`),
//! output record batches filled (`batch.rs`), fetched record batches checked
//! (`fetched.rs`) and parsed (`runs.rs`), the exactly-once changelog's states written
//! (`state.rs`, for the live join of `join.rs`). The result writer, the join and the
//! packing read and write the structs' fields through `attr.rs` (from the slot where
//! `getattr` would read it).
//!
//! The Python builder (`worker/fusion/result.py`, `classification_results` then
//! `result_json`) makes a dict per request and per member and encodes them; this writes
//! the same bytes without the dicts. The bytes are msgspec's for the same values: the
//! same key order, floats in their shortest form in msgspec's layout, ints in decimal,
//! strings with the same escapes. A batch this does not cover (a string that is not
//! valid UTF-8, a time that is not an i64) returns None and Python builds it instead.

#[macro_use]
mod attr;
mod batch;
mod decode;
mod fetched;
mod fused;
mod histogram;
mod join;
mod pack;
mod partition;
mod runs;
mod state;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

/// What the metrics count of a batch: per model, how often it was missing (not counting
/// decided results) and how often its label was not the fused one; each result's
/// latency (ms) and status (an index of `STATUSES`); per model, the arrival delay (its
/// event's `ts` minus the request's `first_ts`, ms) of each member it sent, in request
/// order, as native-order i64 bytes; whether any member has a `traceparent`.
type Summary = (Vec<u64>, Vec<u64>, Vec<i64>, Vec<u8>, Vec<Vec<u8>>, bool);

const STATUSES: [&str; 4] = ["complete", "partial", "decided", "insufficient"];
const COMPLETE: u8 = 0;
const PARTIAL: u8 = 1;
const DECIDED: u8 = 2;
const INSUFFICIENT: u8 = 3;

/// A JSON string: `"`, `\` and the control characters escaped as msgspec does
/// (`\b \t \n \f \r` by name, the others as `\u00XX`); everything else as UTF-8.
fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 0xf) as usize]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// A float: the shortest round trip (`1.0`, `0.00001`, `1.5e-7`, `1e16`, as msgspec);
/// NaN and the infinities as null, as msgspec and orjson write them.
fn write_f64(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        let mut buffer = zmij::Buffer::new();
        let text = buffer.format_finite(x).as_bytes();
        if x.abs() < 1e16 {
            out.extend_from_slice(text);
        } else {
            // zmij writes "1e+16" where msgspec and orjson (and ryu) write "1e16". The
            // results hold no such number today (weights are normalised, the rest are
            // probabilities), so this is for the layout's sake.
            out.extend(text.iter().filter(|&&c| c != b'+'));
        }
    } else {
        out.extend_from_slice(b"null");
    }
}

fn write_i64(out: &mut Vec<u8>, x: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(x).as_bytes());
}

fn write_floats(out: &mut Vec<u8>, xs: &[f64]) {
    out.push(b'[');
    for (i, &x) in xs.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_f64(out, x);
    }
    out.push(b']');
}

/// An array of 8-byte numbers from its native-order bytes (`ndarray.tobytes()`),
/// checked for its length.
fn words<T>(name: &str, raw: &[u8], len: usize, from: fn([u8; 8]) -> T) -> PyResult<Vec<T>> {
    if raw.len() != len * 8 {
        return Err(PyValueError::new_err(format!(
            "{name}: {} bytes, expected {len} 8-byte numbers",
            raw.len()
        )));
    }
    Ok(raw
        .chunks_exact(8)
        .map(|c| from(c.try_into().unwrap()))
        .collect())
}

fn floats(name: &str, raw: &[u8], len: usize) -> PyResult<Vec<f64>> {
    words(name, raw, len, f64::from_ne_bytes)
}

fn ints(name: &str, raw: &[u8], len: usize) -> PyResult<Vec<i64>> {
    words(name, raw, len, i64::from_ne_bytes)
}

fn flags(name: &str, raw: &[u8], len: usize) -> PyResult<()> {
    if raw.len() != len {
        return Err(PyValueError::new_err(format!(
            "{name}: {} bytes, expected {} bools",
            raw.len(),
            len
        )));
    }
    Ok(())
}

/// An optional str attribute as &str; Err where it is neither None nor valid UTF-8.
fn opt_str<'a>(value: &'a Bound<'a, PyAny>) -> PyResult<Option<&'a str>> {
    if value.is_none() {
        Ok(None)
    } else {
        Ok(Some(value.downcast::<PyString>()?.to_str()?))
    }
}

/// One result's JSON per request of `finished`, in order, and the batch's `Summary`;
/// None where the batch holds something only the Python builder writes (a string that
/// is not UTF-8, a time beyond i64). The arrays are the batch's, as `tobytes()`:
/// `probs` (n, k) the fused probabilities, `winner` (n,) the fused label, `confidence`
/// and `agreement` (n,), `weights` (n, m), `answered` and `by_fallback` (n,) bools,
/// `member_probs` (n, m, k), `member_labels` (n, m), `contribution` (n, m).
#[pyfunction]
#[pyo3(signature = (
    finished, models, labels, strategy, fallback, calibration, probs, winner,
    confidence, agreement, weights, answered, by_fallback, member_probs, member_labels,
    contribution,
))]
#[allow(clippy::too_many_arguments)]
fn classification_json<'py>(
    py: Python<'py>,
    finished: &Bound<'py, PyList>,
    models: Vec<Bound<'py, PyString>>,
    labels: Vec<String>,
    strategy: &str,
    fallback: Option<&str>,
    calibration: Option<&str>,
    probs: &[u8],
    winner: &[u8],
    confidence: &[u8],
    agreement: &[u8],
    weights: &[u8],
    answered: &[u8],
    by_fallback: &[u8],
    member_probs: &[u8],
    member_labels: &[u8],
    contribution: &[u8],
) -> PyResult<Option<(Bound<'py, PyList>, Summary)>> {
    let n = finished.len();
    let m = models.len();
    let k = labels.len();
    let probs = floats("probs", probs, n * k)?;
    let winner = ints("winner", winner, n)?;
    let confidence = floats("confidence", confidence, n)?;
    let agreement = floats("agreement", agreement, n)?;
    let weights = floats("weights", weights, n * m)?;
    flags("answered", answered, n)?;
    flags("by_fallback", by_fallback, n)?;
    let member_probs = floats("member_probs", member_probs, n * m * k)?;
    let member_labels = ints("member_labels", member_labels, n * m)?;
    let contribution = floats("contribution", contribution, n * m)?;
    if winner
        .iter()
        .zip(answered)
        .any(|(&w, &a)| a != 0 && !(0..k as i64).contains(&w))
        || member_labels.iter().any(|&l| l < -1 || l >= k as i64)
    {
        return Err(PyValueError::new_err("a label index outside the labels"));
    }
    match write_batch(
        py,
        finished,
        &models,
        &labels,
        strategy,
        fallback,
        calibration,
        &Arrays {
            probs: &probs,
            winner: &winner,
            confidence: &confidence,
            agreement: &agreement,
            weights: &weights,
            answered,
            by_fallback,
            member_probs: &member_probs,
            member_labels: &member_labels,
            contribution: &contribution,
        },
    ) {
        Ok(done) => Ok(Some(done)),
        // Not UTF-8, not an i64, not the expected type: the Python builder's case.
        Err(_) => Ok(None),
    }
}

struct Arrays<'a> {
    probs: &'a [f64],
    winner: &'a [i64],
    confidence: &'a [f64],
    agreement: &'a [f64],
    weights: &'a [f64],
    answered: &'a [u8],
    by_fallback: &'a [u8],
    member_probs: &'a [f64],
    member_labels: &'a [i64],
    contribution: &'a [f64],
}

#[allow(clippy::too_many_arguments)]
fn write_batch<'py>(
    py: Python<'py>,
    finished: &Bound<'py, PyList>,
    models: &[Bound<'py, PyString>],
    labels: &[String],
    strategy: &str,
    fallback: Option<&str>,
    calibration: Option<&str>,
    a: &Arrays<'_>,
) -> PyResult<(Bound<'py, PyList>, Summary)> {
    let n = finished.len();
    let m = models.len();
    let k = labels.len();
    // What is the same for every result, written once: each model's key, each label's
    // string, the strategy's pair, the label list and the optional tail.
    let mut model_keys: Vec<Vec<u8>> = Vec::with_capacity(m);
    let mut model_strs: Vec<Vec<u8>> = Vec::with_capacity(m);
    for name in models {
        let mut s = Vec::new();
        write_str(&mut s, name.to_str()?);
        let mut key = s.clone();
        key.push(b':');
        model_strs.push(s);
        model_keys.push(key);
    }
    let label_strs: Vec<Vec<u8>> = labels
        .iter()
        .map(|l| {
            let mut s = Vec::new();
            write_str(&mut s, l);
            s
        })
        .collect();
    let mut label_list = vec![b'['];
    for (i, s) in label_strs.iter().enumerate() {
        if i > 0 {
            label_list.push(b',');
        }
        label_list.extend_from_slice(s);
    }
    label_list.push(b']');
    let mut strategy_part = b",\"strategy\":".to_vec();
    write_str(&mut strategy_part, strategy);
    let mut fallback_part = b",\"fallback\":".to_vec();
    match fallback {
        Some(f) => write_str(&mut fallback_part, f),
        None => fallback_part.extend_from_slice(b"null"),
    }
    let mut calibration_part = Vec::new();
    if let Some(c) = calibration {
        calibration_part.extend_from_slice(b",\"calibration\":");
        write_str(&mut calibration_part, c);
    }

    let out = PyList::empty(py);
    let mut missing_counts = vec![0u64; m];
    let mut disagree = vec![0u64; m];
    let mut latencies = Vec::with_capacity(n);
    let mut status_of = Vec::with_capacity(n);
    let mut arrivals: Vec<Vec<u8>> = vec![Vec::with_capacity(n * 8); m];
    let mut traced = false;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut present: Vec<Option<Bound<'py, PyAny>>> = Vec::with_capacity(m);
    for (i, req) in finished.iter().enumerate() {
        buf.clear();
        present.clear();
        let request_id = attr!(&req, "request_id")?;
        let members_obj = attr!(&req, "members")?;
        let members = members_obj.downcast::<PyDict>()?;
        let first_ts: i64 = attr!(&req, "first_ts")?.extract()?;
        let fused_ts: i64 = attr!(&req, "fused_ts")?.extract()?;
        let opened_ms: i64 = attr!(&req, "opened_ms")?.extract()?;
        let decided: bool = attr!(&req, "decided")?.extract()?;
        let latency = fused_ts
            .checked_sub(opened_ms)
            .ok_or_else(|| PyValueError::new_err("latency beyond i64"))?;
        let mut n_missing = 0;
        for name in models {
            let ev = members.get_item(name)?;
            n_missing += ev.is_none() as usize;
            present.push(ev);
        }
        let ok = a.answered[i] != 0;
        let status = if !ok {
            INSUFFICIENT
        } else if n_missing == 0 {
            COMPLETE
        } else if decided {
            DECIDED
        } else {
            PARTIAL
        };
        let fused_label = a.winner[i];

        buf.extend_from_slice(b"{\"request_id\":");
        write_str(&mut buf, request_id.downcast::<PyString>()?.to_str()?);
        buf.extend_from_slice(&strategy_part);
        buf.extend_from_slice(b",\"status\":\"");
        buf.extend_from_slice(STATUSES[status as usize].as_bytes());
        buf.push(b'"');
        if ok {
            buf.extend_from_slice(b",\"label\":");
            buf.extend_from_slice(&label_strs[fused_label as usize]);
            buf.extend_from_slice(b",\"probs\":");
            write_floats(&mut buf, &a.probs[i * k..(i + 1) * k]);
            buf.extend_from_slice(b",\"labels\":");
            buf.extend_from_slice(&label_list);
            buf.extend_from_slice(b",\"confidence\":");
            write_f64(&mut buf, a.confidence[i]);
            buf.extend_from_slice(b",\"agreement\":");
            write_f64(&mut buf, a.agreement[i]);
        } else {
            buf.extend_from_slice(
                b",\"label\":null,\"probs\":null,\"labels\":null,\"confidence\":null,\"agreement\":null",
            );
        }

        buf.extend_from_slice(b",\"members\":{");
        let mut first = true;
        for (j, ev) in present.iter().enumerate() {
            let Some(ev) = ev else { continue };
            if !first {
                buf.push(b',');
            }
            first = false;
            let ij = i * m + j;
            let label = a.member_labels[ij];
            buf.extend_from_slice(&model_keys[j]);
            buf.extend_from_slice(b"{\"weight\":");
            write_f64(&mut buf, a.weights[ij]);
            buf.extend_from_slice(b",\"label\":");
            if label >= 0 {
                buf.extend_from_slice(&label_strs[label as usize]);
            } else {
                buf.extend_from_slice(b"null");
            }
            if !attr!(&ev, "probs")?.is_none() {
                buf.extend_from_slice(b",\"probs\":");
                write_floats(&mut buf, &a.member_probs[ij * k..(ij + 1) * k]);
            }
            if ok && label >= 0 {
                buf.extend_from_slice(b",\"contribution\":");
                write_f64(&mut buf, a.contribution[ij]);
            }
            let ts: i64 = attr!(&ev, "ts")?.extract()?;
            let delay = ts
                .checked_sub(first_ts)
                .ok_or_else(|| PyValueError::new_err("delay beyond i64"))?;
            arrivals[j].extend_from_slice(&delay.to_ne_bytes());
            let traceparent = attr!(&ev, "traceparent")?;
            if let Some(tp) = opt_str(&traceparent)? {
                traced = true;
                let id = tp
                    .get(3..35)
                    .ok_or_else(|| PyValueError::new_err("short traceparent"))?;
                buf.extend_from_slice(b",\"trace_id\":");
                write_str(&mut buf, id);
            }
            buf.push(b'}');
            if ok && label >= 0 && label != fused_label {
                disagree[j] += 1;
            }
        }
        buf.extend_from_slice(b"},\"missing\":[");
        let mut first = true;
        for (j, ev) in present.iter().enumerate() {
            if ev.is_some() {
                continue;
            }
            if !first {
                buf.push(b',');
            }
            first = false;
            buf.extend_from_slice(&model_strs[j]);
            if status != DECIDED {
                missing_counts[j] += 1;
            }
        }
        buf.extend_from_slice(b"],\"first_ts\":");
        write_i64(&mut buf, first_ts);
        buf.extend_from_slice(b",\"fused_ts\":");
        write_i64(&mut buf, fused_ts);
        buf.extend_from_slice(b",\"latency_ms\":");
        write_i64(&mut buf, latency);
        buf.extend_from_slice(b",\"model_versions\":{");
        let mut first = true;
        for (j, ev) in present.iter().enumerate() {
            let Some(ev) = ev else { continue };
            let version = attr!(&ev, "model_version")?;
            if let Some(v) = opt_str(&version)? {
                if !first {
                    buf.push(b',');
                }
                first = false;
                buf.extend_from_slice(&model_keys[j]);
                write_str(&mut buf, v);
            }
        }
        buf.extend_from_slice(b"},\"trace_id\":");
        // The first member by arrival (the dict's order) that sent one.
        let mut trace_id = None;
        for ev in members.values().iter() {
            let t = attr!(&ev, "trace_id")?;
            if !t.is_none() {
                trace_id = Some(t);
                break;
            }
        }
        match &trace_id {
            Some(t) => write_str(&mut buf, t.downcast::<PyString>()?.to_str()?),
            None => buf.extend_from_slice(b"null"),
        }
        if ok && a.by_fallback[i] != 0 {
            buf.extend_from_slice(&fallback_part);
        }
        buf.extend_from_slice(&calibration_part);
        buf.push(b'}');

        out.append(PyBytes::new(py, &buf))?;
        latencies.push(latency);
        status_of.push(status);
    }
    Ok((
        out,
        (
            missing_counts,
            disagree,
            latencies,
            status_of,
            arrivals,
            traced,
        ),
    ))
}

#[pymodule]
fn fusion_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(classification_json, m)?)?;
    m.add_class::<decode::FastDecoder>()?;
    m.add_function(wrap_pyfunction!(partition::partitions_for, m)?)?;
    m.add_function(wrap_pyfunction!(partition::partition_rows, m)?)?;
    m.add_class::<batch::RecordBatch>()?;
    m.add_function(wrap_pyfunction!(pack::pack_members, m)?)?;
    m.add_class::<fused::FusedIds>()?;
    m.add_class::<join::JoinCore>()?;
    m.add_class::<histogram::Buckets>()?;
    m.add_function(wrap_pyfunction!(fetched::first_corrupt_batch, m)?)?;
    m.add_class::<runs::Fetched>()?;
    m.add_class::<runs::Run>()?;
    m.add_class::<runs::FetchedRecord>()?;
    m.add_function(wrap_pyfunction!(attr::slot_get, m)?)?;
    m.add_function(wrap_pyfunction!(attr::slot_set, m)?)?;
    Ok(())
}
