//! A fetched partition's records parsed straight from the bytes the broker sent, without
//! a Python object per record: `Fetched` is what aiokafka's fetcher iterates for one
//! fetched partition (`worker/runtime/raw_records.py` puts it in place of aiokafka's
//! `PartitionRecords`), and `take` hands over a `Run` of its records, which the decoder
//! (`decode.rs`) and the join (`join.rs`) read in place. A record object
//! (`FetchedRecord`, aiokafka's `DefaultRecord`'s attributes) is made only for a record
//! someone indexes: one the Python decoder or the dead-letter topic takes.
//!
//! The records and fetch positions are those aiokafka's `PartitionRecords` hands over
//! (`_unpack_records` of the pinned minor): control batches skipped, each record below
//! the fetch position skipped, the position after a batch its last offset + 1 (which
//! compaction keeps). `parse` covers only what it is sure of: v2 batches, uncompressed,
//! CRCs matching (when checked), every record's framing as aiokafka checks it, header
//! keys in UTF-8. For anything else it returns None and the caller keeps aiokafka's
//! iterator, which then decompresses, raises `CorruptRecordException` at the same batch,
//! or reads the old formats. Aborted transactions are the caller's to rule out: it asks
//! only for a partition whose fetch listed none.

use std::sync::Arc;

use pyo3::exceptions::{PyIndexError, PyStopIteration};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString};

// Kafka's `RecordBatch` v2 header: where each field starts, and its whole length
// (aiokafka's `DefaultRecordBase.HEADER_STRUCT`).
const LOG_OVERHEAD: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const FIRST_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const RECORDS_COUNT: usize = 57;
const HEADER_LEN: usize = 61;
const CODEC_MASK: i16 = 0x07;
const LOG_APPEND_TIME: i16 = 0x08;
const CONTROL: i16 = 0x20;

/// Where a field's bytes are in the fetched data (`len` < 0: null).
#[derive(Clone, Copy)]
struct Span {
    at: usize,
    len: isize,
}

impl Span {
    fn get<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        (self.len >= 0).then(|| &data[self.at..self.at + self.len as usize])
    }
}

/// One record handed over: what aiokafka's `DefaultRecord` holds, its key, value and
/// headers left in the fetched bytes.
#[derive(Clone, Copy)]
pub struct Rec {
    pub offset: i64,
    pub timestamp: i64,
    log_append: bool,
    key: Span,
    value: Span,
    /// Where the headers' count is, and the count.
    headers_at: usize,
    pub headers: usize,
}

impl Rec {
    pub fn value<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        self.value.get(data)
    }

    pub fn key<'a>(&self, data: &'a [u8]) -> Option<&'a [u8]> {
        self.key.get(data)
    }
}

fn be<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b[at..at + N].try_into().unwrap()
}

/// A zigzag varint (Kafka's varint and varlong), as aiokafka's `decode_varint` reads it;
/// None past the end or beyond 64 bits.
fn varint(b: &[u8], pos: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *b.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value >> 1) as i64 ^ -((value & 1) as i64));
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// A length-prefixed field of a record (`len` < 0: null), within `b`.
fn field(b: &[u8], pos: &mut usize, base: usize) -> Option<Span> {
    let len = varint(b, pos)?;
    if len < 0 {
        return Some(Span { at: 0, len: -1 });
    }
    let len = usize::try_from(len).ok()?;
    let at = *pos;
    *pos = at.checked_add(len).filter(|&end| end <= b.len())?;
    Some(Span {
        at: base + at,
        len: len as isize,
    })
}

/// The records of a fetched record set from fetch `position` on, and the position after
/// them all; None where aiokafka's iterator must decide (see the module doc).
fn parse(data: &[u8], mut position: i64, check_crcs: bool) -> Option<(Vec<Rec>, i64)> {
    let mut recs = Vec::new();
    let mut pos = 0;
    while data.len() - pos >= LOG_OVERHEAD {
        let b = &data[pos..];
        let length = usize::try_from(i32::from_be_bytes(be(b, 8))).ok()?;
        if b.len() - LOG_OVERHEAD < length {
            break; // cut short by the fetch size: aiokafka's MemoryRecords stops here
        }
        let end = LOG_OVERHEAD + length;
        if end < HEADER_LEN || b[MAGIC] != 2 {
            return None;
        }
        let b = &b[..end];
        if check_crcs && crc32c::crc32c(&b[ATTRIBUTES..]) != u32::from_be_bytes(be(b, CRC)) {
            return None;
        }
        let attributes = i16::from_be_bytes(be(b, ATTRIBUTES));
        if attributes & CODEC_MASK != 0 {
            return None;
        }
        let base_offset = i64::from_be_bytes(be(b, 0));
        let last_delta = i64::from(i32::from_be_bytes(be(b, LAST_OFFSET_DELTA)));
        let next_offset = base_offset.checked_add(last_delta)?.checked_add(1)?;
        if attributes & CONTROL != 0 {
            position = next_offset;
            pos += end;
            continue;
        }
        let log_append = attributes & LOG_APPEND_TIME != 0;
        let first_ts = i64::from_be_bytes(be(b, FIRST_TIMESTAMP));
        let max_ts = i64::from_be_bytes(be(b, MAX_TIMESTAMP));
        let count = usize::try_from(i32::from_be_bytes(be(b, RECORDS_COUNT))).ok()?;
        let mut p = HEADER_LEN;
        for _ in 0..count {
            let length = varint(b, &mut p)?;
            let start = p;
            varint(b, &mut p)?; // the record's attributes, unused
            let ts_delta = varint(b, &mut p)?;
            let offset = base_offset.checked_add(varint(b, &mut p)?)?;
            let key = field(b, &mut p, pos)?;
            let value = field(b, &mut p, pos)?;
            let headers_at = pos + p;
            let headers = usize::try_from(varint(b, &mut p)?).ok()?;
            for _ in 0..headers {
                let name = field(b, &mut p, 0)?;
                std::str::from_utf8(name.get(b)?).ok()?;
                field(b, &mut p, 0)?;
            }
            if i64::try_from(p - start).ok()? != length {
                return None;
            }
            if offset >= position {
                let timestamp = if log_append {
                    max_ts
                } else {
                    first_ts.checked_add(ts_delta)?
                };
                recs.push(Rec {
                    offset,
                    timestamp,
                    log_append,
                    key,
                    value,
                    headers_at,
                    headers,
                });
                position = offset + 1;
            }
        }
        if p != end {
            return None; // bytes left after the last record
        }
        position = next_offset;
        pos += end;
    }
    Some((recs, position))
}

/// One fetched partition's records, handed over in runs (`take`) or one at a time
/// (`__next__`, for `getone`), with the fetch position after what was handed over
/// (`next_fetch_offset`, as aiokafka's `PartitionRecords` has it).
#[pyclass(module = "fusion_native")]
pub struct Fetched {
    data: Py<PyBytes>,
    recs: Arc<[Rec]>,
    next: usize,
    /// The position once every record is handed over (after trailing skipped batches).
    end: i64,
    #[pyo3(get)]
    next_fetch_offset: i64,
}

#[pymethods]
impl Fetched {
    /// The records of `data` (a fetched partition's record set) from fetch `position` on;
    /// None where aiokafka's own iterator must take them (see the module doc).
    #[staticmethod]
    fn parse(data: Bound<'_, PyBytes>, position: i64, check_crcs: bool) -> Option<Fetched> {
        let (recs, end) = parse(data.as_bytes(), position, check_crcs)?;
        Some(Fetched {
            data: data.unbind(),
            recs: recs.into(),
            next: 0,
            end,
            next_fetch_offset: position,
        })
    }

    /// The next run of at most `max_records` records (all that are left: None), and
    /// whether that finished the partition. As aiokafka's `getall` loop: a run that
    /// stops at `max_records` leaves the position after its last record, even where it
    /// took the last one; the next call then finds none and moves past what is skipped.
    #[pyo3(signature = (max_records=None))]
    fn take(&mut self, py: Python<'_>, max_records: Option<usize>) -> (Run, bool) {
        // aiokafka's loop appends a record before it compares the count: at least one.
        let max_records = max_records.map(|m| m.max(1));
        let left = self.recs.len() - self.next;
        let n = max_records.map_or(left, |m| m.min(left));
        let run = Run {
            data: self.data.clone_ref(py),
            recs: self.recs.clone(),
            lo: self.next,
            hi: self.next + n,
        };
        self.next += n;
        let done = max_records.is_none_or(|m| n < m);
        self.next_fetch_offset = if done {
            self.end
        } else {
            self.recs[self.next - 1].offset + 1
        };
        (run, done)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    /// One record (aiokafka's `getone`): the position after it, else after everything.
    fn __next__(&mut self, py: Python<'_>) -> PyResult<FetchedRecord> {
        let Some(rec) = self.recs.get(self.next).copied() else {
            self.next_fetch_offset = self.end;
            return Err(PyStopIteration::new_err(()));
        };
        self.next += 1;
        self.next_fetch_offset = rec.offset + 1;
        record(py, self.data.bind(py).as_bytes(), &rec)
    }
}

/// Records of one fetched partition in offset order, as a read-only sequence: what
/// `getmany` returns for the partition.
#[pyclass(module = "fusion_native", frozen, sequence)]
pub struct Run {
    data: Py<PyBytes>,
    recs: Arc<[Rec]>,
    lo: usize,
    hi: usize,
}

impl Run {
    /// The records and the bytes they point into.
    pub fn parts<'a>(&'a self, py: Python<'a>) -> (&'a [u8], &'a [Rec]) {
        (self.data.bind(py).as_bytes(), &self.recs[self.lo..self.hi])
    }
}

#[pymethods]
impl Run {
    fn __len__(&self) -> usize {
        self.hi - self.lo
    }

    fn __getitem__(&self, py: Python<'_>, index: isize) -> PyResult<FetchedRecord> {
        let n = (self.hi - self.lo) as isize;
        let i = if index < 0 { index + n } else { index };
        if !(0..n).contains(&i) {
            return Err(PyIndexError::new_err("run index out of range"));
        }
        let (data, recs) = self.parts(py);
        record(py, data, &recs[i as usize])
    }

    /// The records as a list of record objects.
    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let (data, recs) = self.parts(py);
        let items = recs
            .iter()
            .map(|r| record(py, data, r))
            .collect::<PyResult<Vec<_>>>()?;
        PyList::new(py, items)?
            .as_any()
            .try_iter()
            .map(Bound::into_any)
    }
}

/// A record made of the fetched bytes: aiokafka's `DefaultRecord`'s attributes.
#[pyclass(module = "fusion_native", frozen, get_all)]
pub struct FetchedRecord {
    offset: i64,
    timestamp: i64,
    timestamp_type: i64,
    key: Option<Py<PyBytes>>,
    value: Option<Py<PyBytes>>,
    headers: Py<PyList>,
}

fn bytes_of(py: Python<'_>, data: &[u8], span: Span) -> Option<Py<PyBytes>> {
    span.get(data).map(|b| PyBytes::new(py, b).unbind())
}

fn record(py: Python<'_>, data: &[u8], rec: &Rec) -> PyResult<FetchedRecord> {
    let mut headers = Vec::with_capacity(rec.headers);
    let mut p = rec.headers_at;
    varint(data, &mut p); // the count, checked by parse
    for _ in 0..rec.headers {
        let name = field(data, &mut p, 0).expect("checked by parse");
        let value = field(data, &mut p, 0).expect("checked by parse");
        let name = std::str::from_utf8(name.get(data).unwrap()).expect("checked by parse");
        headers.push((PyString::new(py, name), bytes_of(py, data, value)).into_pyobject(py)?);
    }
    Ok(FetchedRecord {
        offset: rec.offset,
        timestamp: rec.timestamp,
        timestamp_type: i64::from(rec.log_append),
        key: bytes_of(py, data, rec.key),
        value: bytes_of(py, data, rec.value),
        headers: PyList::new(py, headers)?.unbind(),
    })
}
