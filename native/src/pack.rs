//! The members of a batch of finished classification requests as the fusion's arrays
//! (`worker/fusion/batch.py`, `build_batch`): each member's packed probabilities in the
//! configured model order, a one-hot row for a member that sent only a label, zeros
//! where a model is missing, and which members are present. What it is not sure of
//! (a member with neither, a vector of another length, a label index out of range,
//! members not in a dict) gives None, and Python builds the batch and raises its own error.

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyInt, PyString};

/// For `finished` (requests with a `members` dict of events by model name) and the
/// configured `models`: the (n, m, n_labels) float64 rows as one bytearray and the
/// (n, m) presence as one bytearray of 0/1, or None (see the module doc).
#[pyfunction]
pub fn pack_members<'py>(
    py: Python<'py>,
    finished: &Bound<'py, PyAny>,
    models: Vec<Bound<'py, PyString>>,
    n_labels: usize,
) -> PyResult<Option<(Bound<'py, PyByteArray>, Bound<'py, PyByteArray>)>> {
    let row_bytes = 8 * n_labels;
    let n = finished.len()?;
    let mut rows: Vec<u8> = Vec::with_capacity(n * models.len() * row_bytes);
    let mut present: Vec<u8> = Vec::with_capacity(n * models.len());
    for req in finished.try_iter()? {
        let members = attr!(&req?, "members")?;
        let Ok(members) = members.downcast::<PyDict>() else {
            return Ok(None);
        };
        for name in &models {
            let Some(ev) = members.get_item(name)? else {
                rows.resize(rows.len() + row_bytes, 0);
                present.push(0);
                continue;
            };
            let probs = attr!(&ev, "probs")?;
            if let Ok(packed) = probs.downcast::<PyBytes>() {
                let packed = packed.as_bytes();
                if packed.len() != row_bytes {
                    return Ok(None);
                }
                rows.extend_from_slice(packed);
            } else if probs.is_none() {
                let label = attr!(&ev, "label")?;
                let Ok(label) = label.downcast::<PyInt>() else {
                    return Ok(None);
                };
                let label: i64 = label.extract()?;
                if label >= n_labels as i64 {
                    return Ok(None);
                }
                let start = rows.len();
                rows.resize(start + row_bytes, 0);
                // Below 0 (-1): a code of the model's own that maps to no fused label,
                // so the member abstains with zeros.
                if label >= 0 {
                    let at = start + 8 * label as usize;
                    rows[at..at + 8].copy_from_slice(&1.0f64.to_ne_bytes());
                }
            } else {
                return Ok(None);
            }
            present.push(1);
        }
    }
    Ok(Some((
        PyByteArray::new(py, &rows),
        PyByteArray::new(py, &present),
    )))
}
