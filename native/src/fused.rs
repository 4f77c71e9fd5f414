//! The request ids a join table closed, remembered for a while (`worker/join_fused.py`,
//! whose `FusedIds` this is, compiled): each id until its expiry time and at most `limit`
//! of them, the oldest first out. The table asks it of every new request (`late`) and
//! tells it of every closed one (`add`). Held in Rust, an id costs no Python tuple, and
//! finding that a new request is not remembered no Python call.
//!
//! Each id is kept once, in `order` (a ring, oldest first), and found through `index`,
//! a hash table of (hash, entry number) pairs: the hash is Python's own of the id's str,
//! cached in the str object and salted per process as Python's dicts are, so nothing is
//! hashed again; an entry number says where in `order` its id is.

use std::collections::VecDeque;

use hashbrown::HashTable;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};

/// An id's bytes: its UTF-8, or for a str with lone surrogates (which have none) its
/// `surrogatepass` encoding, which no other str shares.
fn with_key<R>(rid: &Bound<'_, PyString>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    match rid.to_str() {
        Ok(s) => Ok(f(s.as_bytes())),
        Err(_) => {
            let encoded = rid.call_method1("encode", ("utf-8", "surrogatepass"))?;
            Ok(f(encoded.downcast::<PyBytes>()?.as_bytes()))
        }
    }
}

struct Entry {
    expiry_ms: i64,
    hash: u64,
    id: Box<[u8]>,
}

#[pyclass(module = "fusion_native")]
pub struct FusedIds {
    limit: usize,
    /// Every entry added and not yet dropped, oldest first; entry number `first + i` is
    /// `order[i]`. An entry whose id was added again since is stale and only dropped.
    order: VecDeque<Entry>,
    first: u64,
    /// (hash, entry number) of each remembered id's latest entry.
    index: HashTable<(u64, u64)>,
}

impl FusedIds {
    fn entry(&self, number: u64) -> &Entry {
        &self.order[(number - self.first) as usize]
    }

    /// The index slot of `id` (of `hash`), if it is remembered.
    fn find(&self, hash: u64, id: &[u8]) -> Option<u64> {
        self.index
            .find(hash, |&(h, n)| h == hash && *self.entry(n).id == *id)
            .map(|&(_, n)| n)
    }

    fn insert(&mut self, rid: &Bound<'_, PyString>, expiry_ms: i64) -> PyResult<()> {
        let hash = rid.hash()? as u64;
        let number = self.first + self.order.len() as u64;
        with_key(rid, |id| {
            // Replace the id's earlier entry, if remembered; that entry becomes stale.
            let order = &self.order;
            let first = self.first;
            let found = self.index.find_mut(hash, |&(h, n)| {
                h == hash && *order[(n - first) as usize].id == *id
            });
            match found {
                Some(slot) => slot.1 = number,
                None => {
                    self.index.insert_unique(hash, (hash, number), |&(h, _)| h);
                }
            }
            self.order.push_back(Entry {
                expiry_ms,
                hash,
                id: id.into(),
            });
        })
    }
}

#[pymethods]
impl FusedIds {
    #[new]
    pub(crate) fn new(limit: usize) -> Self {
        FusedIds {
            limit,
            order: VecDeque::new(),
            first: 0,
            index: HashTable::new(),
        }
    }

    fn __len__(&self) -> usize {
        self.index.len()
    }

    /// Remember `rid` until `expiry_ms`; the oldest go beyond the limit.
    pub(crate) fn add(&mut self, rid: &Bound<'_, PyString>, expiry_ms: i64) -> PyResult<()> {
        self.insert(rid, expiry_ms)?;
        if self.index.len() > self.limit {
            self.forget(None);
        }
        Ok(())
    }

    /// Remember every id of `request_ids` not in `skip` until `expiry_ms`; how many.
    fn add_all(
        &mut self,
        request_ids: &Bound<'_, PyAny>,
        expiry_ms: i64,
        skip: &Bound<'_, PyAny>,
    ) -> PyResult<usize> {
        let mut n = 0;
        for rid in request_ids.try_iter()? {
            let rid = rid?;
            if skip.contains(&rid)? {
                continue;
            }
            self.insert(rid.downcast::<PyString>()?, expiry_ms)?;
            n += 1;
        }
        if self.index.len() > self.limit {
            self.forget(None);
        }
        Ok(n)
    }

    /// Drop the ids past their time (`now_ms`; None: none) or beyond the limit.
    #[pyo3(signature = (now_ms))]
    pub(crate) fn forget(&mut self, now_ms: Option<i64>) {
        while let Some(front) = self.order.front() {
            let due = now_ms.is_some_and(|now| front.expiry_ms <= now);
            if !(due || self.index.len() > self.limit) {
                break;
            }
            let number = self.first;
            // Only the id's latest entry is in the index: an id added again stays.
            if let Ok(slot) = self.index.find_entry(front.hash, |&(_, n)| n == number) {
                slot.remove();
            }
            self.order.pop_front();
            self.first += 1;
        }
    }

    /// Whether `rid` is remembered past `now_ms` (its events are then late), after
    /// forgetting what is due at `now_ms`.
    pub(crate) fn late(&mut self, rid: &Bound<'_, PyString>, now_ms: i64) -> PyResult<bool> {
        if self.index.is_empty() {
            return Ok(false);
        }
        if self.order.front().is_some_and(|e| e.expiry_ms <= now_ms) {
            self.forget(Some(now_ms));
        }
        let hash = rid.hash()? as u64;
        let number = with_key(rid, |id| self.find(hash, id))?;
        Ok(number.is_some_and(|n| self.entry(n).expiry_ms > now_ms))
    }
}
