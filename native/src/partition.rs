//! Kafka's default partitioner for a batch of keys: `toPositive(murmur2(key)) %
//! partitions`, as the Java client (`Utils.murmur2`) and aiokafka compute it.

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};

/// Java's `Utils.murmur2` of `data`, as its 32 bits (Java's int arithmetic wraps).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = blocks.remainder();
    if tail.len() == 3 {
        h ^= (tail[2] as u32) << 16;
    }
    if tail.len() >= 2 {
        h ^= (tail[1] as u32) << 8;
    }
    if !tail.is_empty() {
        h ^= tail[0] as u32;
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// The partition of each key (a list of bytes) among `partitions`.
#[pyfunction]
pub fn partitions_for(keys: &Bound<'_, PyList>, partitions: u32) -> PyResult<Vec<u32>> {
    if partitions == 0 {
        return Err(PyValueError::new_err("partitions must be >= 1, got 0"));
    }
    keys.iter()
        .map(|key| Ok((murmur2(key.downcast::<PyBytes>()?.as_bytes()) & 0x7fff_ffff) % partitions))
        .collect()
}

/// The keys' rows grouped by partition: `(partition, rows)` for each partition that has
/// a key, in ascending partition order, each partition's rows in order.
#[pyfunction]
pub fn partition_rows(
    keys: &Bound<'_, PyList>,
    partitions: u32,
) -> PyResult<Vec<(u32, Vec<usize>)>> {
    let of = partitions_for(keys, partitions)?;
    let mut rows: Vec<Vec<usize>> = vec![Vec::new(); partitions as usize];
    for (i, &p) in of.iter().enumerate() {
        rows[p as usize].push(i);
    }
    Ok(rows
        .into_iter()
        .enumerate()
        .filter(|(_, r)| !r.is_empty())
        .map(|(p, r)| (p as u32, r))
        .collect())
}
