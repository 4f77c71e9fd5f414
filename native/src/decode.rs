//! The decoder's fast path for the common valid event of a classification task: a
//! `probs` vector in the configured label order, or a `label`, from a configured model
//! that reports in the fused labels. It gives the same event as the Python decoder
//! (`worker/decode.py`) or None: whatever it is not sure of (any other shape, a field
//! it does not take, a sum near the tolerance, anything invalid) the Python decoder
//! decides, with its reason codes and details. So it never refuses an event itself.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Mutex;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::runs::Run;

/// The v1 fields this path takes; any other field (`labels`, `score`, `text`,
/// `confidence`, or one the schema does not define) fails the parse, and so does a
/// field given twice or `null`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    #[serde(borrow)]
    request_id: Cow<'a, str>,
    #[serde(borrow)]
    model: Cow<'a, str>,
    #[serde(default, deserialize_with = "present")]
    ts: Option<i64>,
    #[serde(default, borrow, deserialize_with = "present")]
    probs: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow, deserialize_with = "present")]
    label: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    model_version: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    trace_id: Option<Cow<'a, str>>,
}

/// An optional field that is there: its value, never `null` (the schema's optional
/// fields are absent or of their type).
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

const REQUEST_ID_MAX_CHARS: usize = 256;
const VERSION_CACHE_MAX: usize = 4096;

/// One decoder per configuration (`worker.decode.Decoder` makes it). `models` maps each
/// configured model that reports in the fused labels to its configured string object;
/// `labels` maps each fused label to its index; `probs_event` and `label_event` are the
/// event classes it builds. Model versions are shared through a cache of its own, as
/// the Python decoder shares them through its own.
#[pyclass(module = "fusion_native")]
pub struct FastDecoder {
    models: HashMap<String, Py<PyString>>,
    labels: HashMap<String, PyObject>,
    n_labels: usize,
    tolerance: f64,
    max_bytes: usize,
    versions: Mutex<HashMap<String, Py<PyString>>>,
    probs_event: PyObject,
    label_event: PyObject,
}

#[pymethods]
impl FastDecoder {
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(
        models: Py<PyDict>,
        labels: Py<PyDict>,
        n_labels: usize,
        tolerance: f64,
        max_bytes: usize,
        probs_event: PyObject,
        label_event: PyObject,
    ) -> PyResult<Self> {
        Python::with_gil(|py| {
            let mut m = HashMap::new();
            for (k, v) in models.bind(py).iter() {
                m.insert(
                    k.extract::<String>()?,
                    v.downcast_into::<PyString>()?.unbind(),
                );
            }
            let mut l = HashMap::new();
            for (k, v) in labels.bind(py).iter() {
                l.insert(k.extract::<String>()?, v.unbind());
            }
            Ok(FastDecoder {
                models: m,
                labels: l,
                n_labels,
                tolerance,
                max_bytes,
                versions: Mutex::new(HashMap::new()),
                probs_event,
                label_event,
            })
        })
    }

    /// Each record of `records` decoded in one call: a list with the event of each, or
    /// None where the Python decoder must decide (a value that is not bytes included).
    /// `records` is a fetched `Run` (`runs.rs`), read in place, or a list of objects with
    /// `value`, `timestamp` and `key` (as `records.RawRecord`). With `check_keys` an
    /// event whose record key is not its request id is None (Python then raises
    /// `key_mismatch`).
    fn decode_many<'py>(
        &self,
        py: Python<'py>,
        records: &Bound<'py, PyAny>,
        check_keys: bool,
    ) -> PyResult<Bound<'py, PyList>> {
        if let Ok(run) = records.downcast::<Run>() {
            let (data, recs) = run.get().parts(py);
            let mut events = Vec::with_capacity(recs.len());
            for r in recs {
                let key = r.key(data);
                let event = match r.value(data) {
                    Some(value) if !check_keys || key.is_some() => {
                        self.event(py, value, Some(r.timestamp), key.filter(|_| check_keys))?
                    }
                    _ => None,
                };
                events.push(event.map_or_else(|| py.None(), Bound::unbind));
            }
            return PyList::new(py, events);
        }
        let out = PyList::empty(py);
        for r in records.downcast::<PyList>()?.iter() {
            let value = r.getattr(intern!(py, "value"))?;
            let Ok(value) = value.downcast::<PyBytes>() else {
                out.append(py.None())?;
                continue;
            };
            let ts: Option<i64> = r.getattr(intern!(py, "timestamp"))?.extract().ok();
            let key_obj;
            let key = if check_keys {
                key_obj = r.getattr(intern!(py, "key"))?;
                match key_obj.downcast::<PyBytes>() {
                    Ok(k) => Some(k.as_bytes()),
                    Err(_) => {
                        out.append(py.None())?;
                        continue;
                    }
                }
            } else {
                None
            };
            match self.event(py, value.as_bytes(), ts, key)? {
                Some(event) => out.append(event)?,
                None => out.append(py.None())?,
            }
        }
        Ok(out)
    }
}

impl FastDecoder {
    /// The event of one record value, or None; `record_ts` is the record timestamp
    /// (None or < 0: none), `key` the record key to check against the request id.
    fn event<'py>(
        &self,
        py: Python<'py>,
        value: &[u8],
        record_ts: Option<i64>,
        key: Option<&[u8]>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        if value.is_empty() || value.len() > self.max_bytes {
            return Ok(None);
        }
        // The whole value checked as UTF-8 at once: parsed from a str, serde_json then
        // does not check each string again (invalid UTF-8 fails either way).
        let Ok(text) = std::str::from_utf8(value) else {
            return Ok(None);
        };
        let Ok(wire) = serde_json::from_str::<Wire>(text) else {
            return Ok(None);
        };
        if key.is_some_and(|k| k != wire.request_id.as_bytes()) {
            return Ok(None);
        }
        let n_chars = wire.request_id.chars().count();
        if n_chars == 0 || n_chars > REQUEST_ID_MAX_CHARS {
            return Ok(None);
        }
        let ts = match (wire.ts, record_ts) {
            (Some(ts), _) if ts >= 0 => ts,
            (Some(_), _) => return Ok(None),
            (None, Some(ts)) if ts >= 0 => ts,
            (None, _) => return Ok(None),
        };
        let Some(model) = self.models.get(wire.model.as_ref()) else {
            return Ok(None); // unknown, or a model with a vocabulary of its own
        };
        let model = model.clone_ref(py);
        let version = match &wire.model_version {
            None => py.None().into_bound(py),
            Some(v) => self.version(py, v),
        };
        let trace_id = match &wire.trace_id {
            None => py.None().into_bound(py),
            Some(t) => PyString::new(py, t).into_any(),
        };
        let request_id = PyString::new(py, &wire.request_id).into_any();
        match (&wire.probs, &wire.label) {
            (Some(raw), None) => {
                if raw.len() != self.n_labels || raw.len() < 2 {
                    return Ok(None);
                }
                // Each number token parsed correctly rounded by the standard library (the
                // token is valid JSON, so anything but a number fails to parse).
                let mut probs = Vec::with_capacity(raw.len());
                for token in raw {
                    match token.get().parse::<f64>() {
                        Ok(p) if p.is_finite() => probs.push(p),
                        _ => return Ok(None),
                    }
                }
                let mut sum = 0.0;
                for &p in &probs {
                    if p < 0.0 {
                        return Ok(None); // negative (JSON has no NaN)
                    }
                    sum += p;
                }
                // Python's sum() may compensate its rounding (3.12 does), so a sum within
                // a few ulps of the tolerance is left to the Python decoder to judge.
                let slack = probs.len() as f64 * 4.5e-16;
                if (sum - 1.0).abs() + slack > self.tolerance {
                    return Ok(None);
                }
                let packed: Vec<u8> = probs.iter().flat_map(|p| p.to_ne_bytes()).collect();
                let probs = PyBytes::new(py, &packed);
                let args = (request_id, model, ts, version, trace_id, probs);
                Ok(Some(self.probs_event.bind(py).call1(args)?))
            }
            (None, Some(label)) => {
                let Some(index) = self.labels.get(label.as_ref()) else {
                    return Ok(None);
                };
                let index = index.clone_ref(py);
                let args = (request_id, model, ts, version, trace_id, index);
                Ok(Some(self.label_event.bind(py).call1(args)?))
            }
            _ => Ok(None),
        }
    }
}

impl FastDecoder {
    /// The shared string object of a model version (the Python decoder's `_version`).
    /// The lock is held for the lookup alone: no Python code runs under it.
    fn version<'py>(&self, py: Python<'py>, value: &str) -> Bound<'py, PyAny> {
        let mut versions = self.versions.lock().unwrap();
        if let Some(known) = versions.get(value) {
            return known.bind(py).clone().into_any();
        }
        let key = PyString::new(py, value);
        if versions.len() < VERSION_CACHE_MAX {
            versions.insert(value.to_owned(), key.clone().unbind());
        }
        key.into_any()
    }
}
