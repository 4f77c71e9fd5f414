//! A histogram's bucket counts and running sum, observed a batch of millisecond values at
//! a time (`worker.metrics_histogram`): what its numpy code computes (seconds clamped
//! at 0, the first bucket whose bound is at least the value, the sum added one value
//! after the other), in one call instead of half a dozen numpy calls on a few dozen
//! values, which is most of a step's metrics at half load.

use pyo3::prelude::*;
use pyo3::types::PyBytes;

#[pyclass(module = "fusion_native")]
pub struct Buckets {
    bounds: Vec<f64>,
    counts: Vec<i64>,
    total: f64,
}

impl Buckets {
    fn add(&mut self, ms: f64) {
        let v = ms / 1000.0;
        // Not f64::max: numpy's maximum keeps a NaN (and -0.0), which then falls in no
        // bucket and makes the sum NaN, as the client's Histogram does.
        let v = if v < 0.0 { 0.0 } else { v };
        if !v.is_nan() {
            let i = self.bounds.partition_point(|b| *b < v);
            if i < self.counts.len() {
                self.counts[i] += 1;
            }
        }
        self.total += v;
    }
}

#[pymethods]
impl Buckets {
    /// `bounds`: the buckets' upper bounds in seconds, ascending (+Inf last).
    #[new]
    fn new(bounds: Vec<f64>) -> Self {
        let n = bounds.len();
        Buckets {
            bounds,
            counts: vec![0; n],
            total: 0.0,
        }
    }

    /// Observe each value, in order: `values` the bytes of native-endian int64
    /// milliseconds (the result writer's arrival delays) or a sequence of numbers (ms).
    fn observe_ms(&mut self, values: &Bound<'_, PyAny>) -> PyResult<()> {
        if let Ok(raw) = values.downcast::<PyBytes>() {
            for chunk in raw.as_bytes().chunks_exact(8) {
                let ms = i64::from_ne_bytes(chunk.try_into().expect("8 bytes"));
                self.add(ms as f64);
            }
        } else {
            for ms in values.extract::<Vec<f64>>()? {
                self.add(ms);
            }
        }
        Ok(())
    }

    /// (count per bucket, not cumulative; the sum of the values).
    fn snapshot(&self) -> (Vec<i64>, f64) {
        (self.counts.clone(), self.total)
    }
}
