//! The live join of one partition number, compiled (`worker/join_compiled.py` wraps it):
//! what `worker.join.JoinTable` does for the live worker (wall-clock deadlines, one
//! source, no early decision), its pending requests held in Rust. An event stays the
//! Python object the decoder made; the table keeps, per request, the events by model
//! position, its arrival code, times and offset marks in one Rust struct, found through
//! a hash table searched by Python's own (cached) hash of the request id. Adding an event,
//! or a step's run of records (`add_run`), then runs no Python code but the constructor
//! of each `FinishedRequest` it closes.
//!
//! The semantics are `JoinTable`'s, and tests/test_join_compiled.py checks them against
//! it operation by operation: outcomes, closed requests (members in arrival order, times,
//! offset spans), deadlines (equal ones close in request-id order), the oldest offset
//! and opening time, the memory of fused ids (`fused.rs`), the pending-state export. So
//! are the memory savings of `_share` (a later member takes the earlier one's request-id
//! string, its `ts` when equal, and drops its `trace_id` when an earlier member has one)
//! and of model versions (one string object per version a model sends).
//!
//! Deadlines, opening order and offset marks are queues with lazy deletion, as in the
//! Python table: an entry is live while its request is pending with that deadline,
//! opening, or lowest offset; stale entries are skipped when reached and dropped in bulk
//! once they outnumber the live ones.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};

use hashbrown::HashTable;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString};

use crate::fused::FusedIds;
use crate::runs::Run;
use crate::state;

const ACCEPTED: i8 = 0;
const DUPLICATE: i8 = 1;
const LATE: i8 = 2;
/// `add_run`'s outcome for a record it leaves to Python (no event, or headers).
const LEFT: i8 = -1;
/// Closes between two checks whether stale queue entries are to be dropped.
const COMPACT_EVERY: u32 = 256;
/// Queues are rebuilt once they hold this many entries more than twice the live ones.
const COMPACT_SLACK: usize = 1024;
/// `Pending::first_ts` of a request whose first_ts is its first member's `ts`.
const FIRST_MEMBER: i64 = i64::MIN;
/// `Pending::low` of a request with no offset mark.
const UNMARKED: i64 = -1;
/// The arrival code (base models + 1, a digit per member) must fit a u64.
pub const MAX_MODELS: usize = 15;

/// One open request.
struct Pending {
    hash: u64,
    rid: Py<PyString>,
    /// The events by model position (None: not reported yet).
    members: Box<[Option<PyObject>]>,
    /// The model positions in arrival order, as the digits (position + 1) of an int in
    /// base models + 1: `JoinTable`'s arrival code.
    arrival: u64,
    opened_ms: i64,
    deadline_ms: i64,
    /// A restored request's own first_ts, else FIRST_MEMBER.
    first_ts: i64,
    /// The smallest and largest offset of its events held (UNMARKED: none).
    low: i64,
    high: i64,
    /// When it was put in the table: its opening-order entry is live while this matches.
    seq: u64,
}

/// Add `span` to `kept` as worker/offsets.py's `keep_span` does: into the last span
/// when it starts inside it, else after it.
fn keep_span(kept: &mut Vec<(i64, i64)>, span: (i64, i64)) {
    match kept.last_mut() {
        Some(last) if last.0 <= span.0 && span.0 <= last.1 => last.1 = last.1.max(span.1),
        _ => kept.push(span),
    }
}

/// A request with no member yet.
fn empty(n: usize) -> Box<[Option<PyObject>]> {
    (0..n).map(|_| None).collect()
}

/// The same request id: the same object, else equal strings (as a dict compares keys).
fn same(py: Python<'_>, a: &Py<PyString>, b: &Bound<'_, PyString>) -> bool {
    a.as_ptr() == b.as_ptr() || a.bind(py).as_any().eq(b).unwrap_or(false)
}

#[pyclass(module = "fusion_native")]
pub struct JoinCore {
    /// The configured model names (the decoder's string objects).
    models: Vec<Py<PyString>>,
    timeout_ms: i64,
    fused_memory_ms: i64,
    remember: bool,
    base: u64,
    complete: u64,
    /// The class of a closed request (`worker.events.FinishedRequest`).
    finished: PyObject,
    pending: HashTable<Box<Pending>>,
    seq: u64,
    /// (request id, seq) in the order the requests were put in the table.
    opened: VecDeque<(Py<PyString>, u64)>,
    /// Request ids by deadline.
    deadlines: BTreeMap<i64, Vec<Py<PyString>>>,
    deadline_entries: usize,
    /// The one source whose offsets are tracked (the first given).
    source: Option<Py<PyString>>,
    /// (offset, request id) of each new lowest mark, in arrival order; `ordered` while
    /// their offsets ascend.
    marks: VecDeque<(i64, Py<PyString>)>,
    ordered: bool,
    last_mark: i64,
    /// Pending requests with a mark.
    tracked: usize,
    /// Per model position, the model_version string of its latest accepted event.
    versions: Vec<Option<Py<PyString>>>,
    memory: FusedIds,
    closed: Vec<PyObject>,
    /// The offset spans of the requests closed since `take_spans` (the source's), in
    /// closing order, each that overlaps the one before merged into it.
    spans: Vec<(i64, i64)>,
    closes: u32,
    /// Per model position, the events accepted since `take_accepted`.
    accepted: Vec<u64>,
}

impl JoinCore {
    fn find(&self, py: Python<'_>, hash: u64, rid: &Bound<'_, PyString>) -> Option<&Pending> {
        self.pending
            .find(hash, |p| p.hash == hash && same(py, &p.rid, rid))
            .map(|b| &**b)
    }

    fn take(
        &mut self,
        py: Python<'_>,
        hash: u64,
        rid: &Bound<'_, PyString>,
    ) -> Option<Box<Pending>> {
        self.pending
            .find_entry(hash, |p| p.hash == hash && same(py, &p.rid, rid))
            .ok()
            .map(|e| e.remove().0)
    }

    fn insert(&mut self, p: Box<Pending>) {
        self.pending.insert_unique(p.hash, p, |q| q.hash);
    }

    fn position(&self, py: Python<'_>, model: &Bound<'_, PyAny>) -> PyResult<usize> {
        if let Some(i) = self
            .models
            .iter()
            .position(|m| m.as_ptr() == model.as_ptr())
        {
            return Ok(i);
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.bind(py).as_any().eq(model)? {
                return Ok(i);
            }
        }
        let names = PyList::new(py, self.models.iter().map(|m| m.bind(py)))?;
        Err(PyValueError::new_err(format!(
            "model {} is not one of the join's models {}",
            model.repr()?,
            names.repr()?
        )))
    }

    /// The model positions of an arrival code, in arrival order.
    fn order(&self, arrival: u64) -> Vec<usize> {
        let mut positions = Vec::with_capacity(self.models.len());
        let mut code = arrival;
        while code > 0 {
            positions.push((code % self.base) as usize - 1);
            code /= self.base;
        }
        positions.reverse();
        positions
    }

    /// One event; the outcome and the event's model position.
    fn add_event(
        &mut self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        now_ms: i64,
        source: &Bound<'_, PyString>,
        offset: i64,
    ) -> PyResult<(i8, usize)> {
        if offset >= 0 {
            match &self.source {
                None => self.source = Some(source.clone().unbind()),
                Some(s) if same(py, s, source) => {}
                Some(s) => {
                    return Err(PyValueError::new_err(format!(
                        "a compiled join table tracks the offsets of one source, {}; got {}",
                        s.bind(py).repr()?,
                        source.repr()?
                    )))
                }
            }
        }
        let rid_obj = attr!(&event, "request_id")?;
        let rid = rid_obj.downcast::<PyString>()?;
        let hash = rid.hash()? as u64;
        let i = self.position(py, &attr!(&event, "model")?)?;
        let existing = self
            .pending
            .find_entry(hash, |p| p.hash == hash && same(py, &p.rid, rid))
            .ok();
        let mut p = match existing {
            None => {
                if self.remember && self.memory.late(rid, now_ms)? {
                    return Ok((LATE, i));
                }
                self.seq += 1;
                Box::new(Pending {
                    hash,
                    rid: rid.clone().unbind(),
                    members: empty(self.models.len()),
                    arrival: 0,
                    opened_ms: now_ms,
                    deadline_ms: now_ms + self.timeout_ms,
                    first_ts: FIRST_MEMBER,
                    low: UNMARKED,
                    high: UNMARKED,
                    seq: self.seq,
                })
            }
            Some(entry) => {
                if entry.get().members[i].is_some() {
                    return Ok((DUPLICATE, i));
                }
                entry.remove().0
            }
        };
        let opened = p.arrival == 0;
        let arrival = p.arrival * self.base + i as u64 + 1;
        if !opened && arrival < self.complete {
            share(py, event, &p)?;
        }
        self.share_version(py, event, i)?;
        p.members[i] = Some(event.clone().unbind());
        p.arrival = arrival;
        if arrival >= self.complete {
            // Every model reported: it closes now (its closing offset widens its span).
            self.finish(py, &p, now_ms, false, offset)?;
            self.closes += 1;
            if self.closes >= COMPACT_EVERY {
                self.compact(py);
            }
            return Ok((ACCEPTED, i));
        }
        if opened {
            self.enqueue(py, &p);
        }
        if offset >= 0 {
            self.mark(py, &mut p, offset);
        }
        self.insert(p);
        Ok((ACCEPTED, i))
    }

    /// A pending request's changelog state as JSON bytes (`state.rs`), None where
    /// Python is to build it.
    fn state_json<'py>(
        &self,
        py: Python<'py>,
        buf: &mut Vec<u8>,
        rid: &Bound<'py, PyString>,
        p: &Pending,
        deps: Option<&[u8]>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let members: Vec<(&Bound<'py, PyString>, Bound<'py, PyAny>)> = self
            .order(p.arrival)
            .into_iter()
            .map(|i| {
                let event = p.members[i].as_ref().expect("a member").bind(py).clone();
                (self.models[i].bind(py), event)
            })
            .collect();
        let times = state::Times {
            opened_ms: p.opened_ms,
            deadline_ms: p.deadline_ms,
            first_ts: (p.first_ts != FIRST_MEMBER).then_some(p.first_ts),
        };
        buf.clear();
        let written = state::write_state(py, buf, rid, &times, &members, deps)?;
        Ok(written.then(|| PyBytes::new(py, buf)))
    }

    /// Put a request just opened (or restored) in the opening order and its deadline's
    /// bucket.
    fn enqueue(&mut self, py: Python<'_>, p: &Pending) {
        self.opened.push_back((p.rid.clone_ref(py), p.seq));
        self.deadlines
            .entry(p.deadline_ms)
            .or_default()
            .push(p.rid.clone_ref(py));
        self.deadline_entries += 1;
    }

    /// Note an accepted event's offset in its pending request's marks; a new lowest one
    /// becomes an entry of `marks` (later events normally come at larger offsets).
    fn mark(&mut self, py: Python<'_>, p: &mut Pending, offset: i64) {
        if p.low == UNMARKED {
            p.low = offset;
            p.high = offset;
            self.tracked += 1;
        } else {
            if offset > p.high {
                p.high = offset;
            }
            if offset >= p.low {
                return;
            }
            p.low = offset; // a re-read after a seek back
        }
        if offset < self.last_mark {
            self.ordered = false;
        } else {
            self.last_mark = offset;
        }
        self.marks.push_back((offset, p.rid.clone_ref(py)));
    }

    /// One string object per model version a model sends (`JoinTable.add`).
    fn share_version(
        &mut self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        i: usize,
    ) -> PyResult<()> {
        let version = attr!(&event, "model_version")?;
        if version.is_none() {
            return Ok(());
        }
        let version = version.downcast_into::<PyString>()?;
        match &self.versions[i] {
            Some(known) if known.as_ptr() == version.as_ptr() => {}
            Some(known) if known.bind(py).as_any().eq(&version)? => {
                set_attr!(event, "model_version", known.bind(py).as_any())?;
            }
            _ => self.versions[i] = Some(version.unbind()),
        }
        Ok(())
    }

    /// Close `p` (out of the table): its FinishedRequest goes to `closed`, its id to the
    /// memory of fused ids. `offset`: the closing event's (-1: none), in its span.
    fn finish(
        &mut self,
        py: Python<'_>,
        p: &Pending,
        fused_ts: i64,
        expired: bool,
        offset: i64,
    ) -> PyResult<()> {
        let order = self.order(p.arrival);
        let members = PyDict::new(py);
        for &i in &order {
            members.set_item(
                self.models[i].bind(py),
                p.members[i].as_ref().map(|e| e.bind(py)),
            )?;
        }
        let first_ts: PyObject = if p.first_ts == FIRST_MEMBER {
            let first = p.members[order[0]]
                .as_ref()
                .expect("a member of its arrival code");
            attr!(first.bind(py), "ts")?.unbind()
        } else {
            p.first_ts.into_pyobject(py)?.into_any().unbind()
        };
        let span: Option<(i64, i64)> = if p.low != UNMARKED {
            self.tracked -= 1;
            let (mut low, mut high) = (p.low, p.high);
            if offset > high {
                high = offset;
            } else if 0 <= offset && offset < low {
                low = offset;
            }
            Some((low, high))
        } else if offset >= 0 {
            Some((offset, offset))
        } else {
            None
        };
        if let (Some(span), Some(_)) = (span, &self.source) {
            keep_span(&mut self.spans, span);
        }
        let args = (
            p.rid.bind(py),
            members,
            first_ts,
            p.opened_ms,
            fused_ts,
            expired,
        );
        self.closed
            .push(self.finished.bind(py).call1(args)?.unbind());
        if self.remember {
            self.memory
                .add(p.rid.bind(py), fused_ts + self.fused_memory_ms)?;
        }
        Ok(())
    }

    fn live_deadline(&self, py: Python<'_>, deadline: i64, rid: &Py<PyString>) -> PyResult<bool> {
        let rid = rid.bind(py);
        let hash = rid.hash()? as u64;
        Ok(self
            .find(py, hash, rid)
            .is_some_and(|p| p.deadline_ms == deadline))
    }

    fn live_mark(&self, py: Python<'_>, offset: i64, rid: &Py<PyString>) -> PyResult<bool> {
        let rid = rid.bind(py);
        let hash = rid.hash()? as u64;
        Ok(self.find(py, hash, rid).is_some_and(|p| p.low == offset))
    }

    fn live_opened(&self, py: Python<'_>, rid: &Py<PyString>, seq: u64) -> PyResult<Option<i64>> {
        let rid = rid.bind(py);
        let hash = rid.hash()? as u64;
        Ok(self
            .find(py, hash, rid)
            .filter(|p| p.seq == seq)
            .map(|p| p.opened_ms))
    }

    /// Close the requests due at `due_ms` (all when None), earliest deadline first and
    /// equal deadlines in request-id order, at `now_ms`; then compact.
    fn close_due(&mut self, py: Python<'_>, due_ms: Option<i64>, now_ms: i64) -> PyResult<()> {
        while let Some(entry) = self.deadlines.first_entry() {
            if due_ms.is_some_and(|due| *entry.key() > due) {
                break;
            }
            let (deadline, mut rids) = entry.remove_entry();
            self.deadline_entries -= rids.len();
            let mut error = None;
            rids.sort_by(|a, b| {
                a.bind(py).compare(b.bind(py)).unwrap_or_else(|e| {
                    error = Some(e);
                    Ordering::Equal
                })
            });
            if let Some(e) = error {
                return Err(e);
            }
            for rid in rids {
                let rid = rid.bind(py);
                let hash = rid.hash()? as u64;
                let due = self
                    .pending
                    .find_entry(hash, |p| p.hash == hash && same(py, &p.rid, rid))
                    .ok()
                    .filter(|e| e.get().deadline_ms == deadline);
                if let Some(entry) = due {
                    let p = entry.remove().0;
                    self.finish(py, &p, now_ms, true, -1)?;
                }
            }
        }
        self.compact(py);
        Ok(())
    }

    /// Drop stale queue entries once they outnumber the live ones.
    fn compact(&mut self, py: Python<'_>) {
        self.closes = 0;
        let bound = 2 * self.pending.len() + COMPACT_SLACK;
        if self.deadline_entries > bound {
            let mut rebuilt: BTreeMap<i64, Vec<Py<PyString>>> = BTreeMap::new();
            for p in self.pending.iter() {
                rebuilt
                    .entry(p.deadline_ms)
                    .or_default()
                    .push(p.rid.clone_ref(py));
            }
            self.deadlines = rebuilt;
            self.deadline_entries = self.pending.len();
        }
        if self.opened.len() > bound {
            let opened = std::mem::take(&mut self.opened);
            self.opened = opened
                .into_iter()
                .filter(|(rid, seq)| self.live_opened(py, rid, *seq).ok().flatten().is_some())
                .collect();
        }
        if self.marks.len() > 2 * self.tracked + COMPACT_SLACK {
            let marks = std::mem::take(&mut self.marks);
            self.marks = marks
                .into_iter()
                .filter(|(offset, rid)| self.live_mark(py, *offset, rid).unwrap_or(false))
                .collect();
        }
    }
}

/// Slim a request's later event before it joins `p` (`worker.join_pending._share`): its
/// request_id becomes the first earlier member's string object, its `ts` an earlier
/// member's equal int, and its `trace_id` is dropped when an earlier member has one.
fn share(py: Python<'_>, event: &Bound<'_, PyAny>, p: &Pending) -> PyResult<()> {
    let ts = attr!(&event, "ts")?;
    let mut first: Option<&PyObject> = None;
    let mut traced = false;
    let mut shared_ts: Option<Bound<'_, PyAny>> = None;
    // Position order, as the Python walk over the list goes.
    for other in p.members.iter().flatten() {
        if first.is_none() {
            first = Some(other);
        }
        let other = other.bind(py);
        if !attr!(&other, "trace_id")?.is_none() {
            traced = true;
        }
        if shared_ts.is_none() {
            let other_ts = attr!(&other, "ts")?;
            if other_ts.eq(&ts)? {
                shared_ts = Some(other_ts);
            }
        }
    }
    if let Some(first) = first {
        set_attr!(event, "request_id", &attr!(first.bind(py), "request_id")?)?;
    }
    if traced && !attr!(&event, "trace_id")?.is_none() {
        set_attr!(event, "trace_id", py.None().bind(py))?;
    }
    if let Some(shared) = shared_ts {
        if !shared.is(&ts) {
            set_attr!(event, "ts", &shared)?;
        }
    }
    Ok(())
}

#[pymethods]
impl JoinCore {
    #[new]
    fn new(
        models: Vec<Bound<'_, PyString>>,
        timeout_ms: i64,
        fused_memory_ms: i64,
        fused_memory_count: usize,
        finished: PyObject,
    ) -> PyResult<Self> {
        let n = models.len();
        if n == 0 || n > MAX_MODELS {
            return Err(PyValueError::new_err(format!(
                "a compiled join table takes 1 to {MAX_MODELS} models, got {n}"
            )));
        }
        let base = n as u64 + 1;
        Ok(JoinCore {
            models: models.into_iter().map(Bound::unbind).collect(),
            timeout_ms,
            fused_memory_ms,
            remember: fused_memory_count > 0,
            base,
            complete: base.pow(n as u32 - 1),
            finished,
            pending: HashTable::new(),
            seq: 0,
            opened: VecDeque::new(),
            deadlines: BTreeMap::new(),
            deadline_entries: 0,
            source: None,
            marks: VecDeque::new(),
            ordered: true,
            last_mark: -1,
            tracked: 0,
            versions: (0..n).map(|_| None).collect(),
            memory: FusedIds::new(fused_memory_count),
            closed: Vec::new(),
            spans: Vec::new(),
            closes: 0,
            accepted: vec![0; n],
        })
    }

    fn __len__(&self) -> usize {
        self.pending.len()
    }

    fn __contains__(&self, py: Python<'_>, rid: &Bound<'_, PyAny>) -> PyResult<bool> {
        let Ok(rid) = rid.downcast::<PyString>() else {
            return Ok(false);
        };
        let hash = rid.hash()? as u64;
        Ok(self.find(py, hash, rid).is_some())
    }

    /// `JoinTable.add`: 0 accepted, 1 duplicate, 2 late.
    fn add(
        &mut self,
        py: Python<'_>,
        event: &Bound<'_, PyAny>,
        now_ms: i64,
        source: &Bound<'_, PyString>,
        offset: i64,
    ) -> PyResult<i8> {
        // Not counted in `accepted`: its caller counts what it adds one at a time.
        Ok(self.add_event(py, event, now_ms, source, offset)?.0)
    }

    /// The records of one partition's run (a fetched `Run`, or a list of records) from
    /// `start` on, with their events (`events`, the compiled decoder's list), each added
    /// at its record's offset; the request id of each accepted one appended to `touched`
    /// (when given). Stops at the first record not accepted, and at one it leaves to
    /// Python (no event, or headers): returns its index and outcome (LEFT for those), or
    /// (len(records), 0) when done.
    #[pyo3(signature = (events, records, start, now_ms, source, touched))]
    #[allow(clippy::too_many_arguments)]
    fn add_run(
        &mut self,
        py: Python<'_>,
        events: &Bound<'_, PyList>,
        records: &Bound<'_, PyAny>,
        start: usize,
        now_ms: i64,
        source: &Bound<'_, PyString>,
        touched: Option<&Bound<'_, PyList>>,
    ) -> PyResult<(usize, i8)> {
        // A fetched run is read in place; a list's records through their attributes.
        let run = records.downcast::<Run>().ok();
        let recs = run.map(|r| r.get().parts(py).1);
        let n = events.len();
        for k in start..n {
            let event = events.get_item(k)?;
            if event.is_none() {
                return Ok((k, LEFT));
            }
            let (headers, offset) = match recs {
                Some(recs) => (recs[k].headers > 0, recs[k].offset),
                None => {
                    let record = records.get_item(k)?;
                    let headers = attr!(&record, "headers")?.is_truthy()?;
                    (headers, attr!(&record, "offset")?.extract()?)
                }
            };
            if headers {
                return Ok((k, LEFT));
            }
            let (outcome, i) = self.add_event(py, &event, now_ms, source, offset)?;
            if outcome != ACCEPTED {
                return Ok((k, outcome));
            }
            self.accepted[i] += 1;
            if let Some(touched) = touched {
                touched.append(attr!(&event, "request_id")?)?;
            }
        }
        Ok((n, ACCEPTED))
    }

    /// Per model position, the events accepted since the last call.
    fn take_accepted(&mut self) -> Vec<u64> {
        let n = self.accepted.len();
        std::mem::replace(&mut self.accepted, vec![0; n])
    }

    fn expire(&mut self, py: Python<'_>, now_ms: i64) -> PyResult<()> {
        self.close_due(py, Some(now_ms), now_ms)?;
        self.memory.forget(Some(now_ms));
        Ok(())
    }

    fn close_all(&mut self, py: Python<'_>, now_ms: i64) -> PyResult<()> {
        self.close_due(py, None, now_ms)
    }

    fn drain<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, std::mem::take(&mut self.closed))
    }

    /// `JoinTable.take_spans`: {source: spans} of the requests closed since the last
    /// call (worker/offsets.py's `keep_span` merging them), or {}.
    fn take_spans<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        if let (Some(source), false) = (&self.source, self.spans.is_empty()) {
            out.set_item(source.bind(py), std::mem::take(&mut self.spans))?;
        }
        Ok(out)
    }

    fn next_deadline_ms(&mut self, py: Python<'_>) -> PyResult<Option<i64>> {
        while let Some((&deadline, rids)) = self.deadlines.first_key_value() {
            let mut live = None;
            for (k, rid) in rids.iter().enumerate() {
                if self.live_deadline(py, deadline, rid)? {
                    live = Some(k);
                    break;
                }
            }
            match live {
                Some(k) => {
                    if k > 0 {
                        // Drop the stale head, so the next call starts at a live id.
                        let rids = self.deadlines.get_mut(&deadline).expect("the first key");
                        rids.drain(..k);
                        self.deadline_entries -= k;
                    }
                    return Ok(Some(deadline));
                }
                None => {
                    let (_, rids) = self.deadlines.pop_first().expect("the first key");
                    self.deadline_entries -= rids.len();
                }
            }
        }
        Ok(None)
    }

    fn oldest_opened_ms(&mut self, py: Python<'_>) -> PyResult<Option<i64>> {
        while let Some((rid, seq)) = self.opened.front() {
            if let Some(opened) = self.live_opened(py, rid, *seq)? {
                return Ok(Some(opened));
            }
            self.opened.pop_front();
        }
        Ok(None)
    }

    /// The smallest offset of an event of a pending request, with its source (None:
    /// nothing marked).
    fn oldest_offset(&mut self, py: Python<'_>) -> PyResult<Option<(Py<PyString>, i64)>> {
        if !self.ordered {
            let marks = std::mem::take(&mut self.marks);
            let mut live: Vec<(i64, Py<PyString>)> = Vec::with_capacity(self.tracked);
            for (offset, rid) in marks {
                if self.live_mark(py, offset, &rid)? {
                    live.push((offset, rid));
                }
            }
            live.sort_by_key(|(offset, _)| *offset);
            self.last_mark = live.last().map_or(-1, |(o, _)| *o);
            self.marks = live.into();
            self.ordered = true;
        }
        while let Some((offset, rid)) = self.marks.front() {
            if self.live_mark(py, *offset, rid)? {
                let source = self.source.as_ref().expect("a mark has a source");
                return Ok(Some((source.clone_ref(py), *offset)));
            }
            self.marks.pop_front();
        }
        Ok(None)
    }

    /// Remember `request_ids` (not pending) as fused until `now_ms` + the memory's time;
    /// how many.
    fn remember_fused(
        &mut self,
        py: Python<'_>,
        request_ids: &Bound<'_, PyAny>,
        now_ms: i64,
    ) -> PyResult<usize> {
        if !self.remember {
            return Ok(0);
        }
        let expiry = now_ms + self.fused_memory_ms;
        let mut n = 0;
        for rid in request_ids.try_iter()? {
            let rid = rid?;
            let rid = rid.downcast::<PyString>()?;
            let hash = rid.hash()? as u64;
            if self.find(py, hash, rid).is_some() {
                continue;
            }
            self.memory.add(rid, expiry)?;
            n += 1;
        }
        Ok(n)
    }

    /// (request id, its state's JSON bytes) for each of `request_ids` that is pending,
    /// in their order (anything not a str is not); `deps`: the JSON of the table's
    /// `deps`, if it has them. The bytes are None where Python is to build them (a
    /// value `state.rs` does not cover).
    #[pyo3(signature = (request_ids, deps))]
    fn pending_json<'py>(
        &self,
        py: Python<'py>,
        request_ids: &Bound<'py, PyAny>,
        deps: Option<&[u8]>,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        let mut buf = Vec::new();
        for rid in request_ids.try_iter()? {
            let rid = rid?;
            let Ok(s) = rid.downcast::<PyString>() else {
                continue;
            };
            let Some(p) = self.find(py, s.hash()? as u64, s) else {
                continue;
            };
            out.append((s, self.state_json(py, &mut buf, s, p, deps)?))?;
        }
        Ok(out)
    }

    /// A pending request's (model position, event) pairs in arrival order, opening
    /// time, first_ts and deadline; None when it is not pending.
    #[allow(clippy::type_complexity)]
    fn pending(
        &self,
        py: Python<'_>,
        rid: &Bound<'_, PyString>,
    ) -> PyResult<Option<(Vec<(usize, PyObject)>, i64, PyObject, i64)>> {
        let hash = rid.hash()? as u64;
        let Some(p) = self.find(py, hash, rid) else {
            return Ok(None);
        };
        let arrived: Vec<(usize, PyObject)> = self
            .order(p.arrival)
            .into_iter()
            .map(|i| (i, p.members[i].as_ref().expect("a member").clone_ref(py)))
            .collect();
        let first_ts = if p.first_ts == FIRST_MEMBER {
            attr!(arrived[0].1.bind(py), "ts")?.unbind()
        } else {
            p.first_ts.into_pyobject(py)?.into_any().unbind()
        };
        Ok(Some((arrived, p.opened_ms, first_ts, p.deadline_ms)))
    }

    /// Re-open a request from its (model position, event) pairs in arrival order
    /// (replacing a pending one of that id; it has no offset marks); a complete one
    /// closes at once at its opening time.
    fn restore(
        &mut self,
        py: Python<'_>,
        rid: &Bound<'_, PyString>,
        arrived: Vec<(usize, PyObject)>,
        opened_ms: i64,
        first_ts: i64,
        deadline_ms: i64,
    ) -> PyResult<()> {
        let hash = rid.hash()? as u64;
        if let Some(old) = self.take(py, hash, rid) {
            if old.low != UNMARKED {
                self.tracked -= 1;
            }
        }
        let mut members = empty(self.models.len());
        let mut arrival = 0;
        for (i, event) in arrived {
            if i >= self.models.len() {
                return Err(PyValueError::new_err(format!(
                    "model position {i} out of range"
                )));
            }
            members[i] = Some(event);
            arrival = arrival * self.base + i as u64 + 1;
        }
        self.seq += 1;
        let p = Box::new(Pending {
            hash,
            rid: rid.clone().unbind(),
            members,
            arrival,
            opened_ms,
            deadline_ms,
            first_ts,
            low: UNMARKED,
            high: UNMARKED,
            seq: self.seq,
        });
        if arrival >= self.complete {
            return self.finish(py, &p, opened_ms, false, -1);
        }
        self.enqueue(py, &p);
        self.insert(p);
        Ok(())
    }

    /// Queue entries held, stale ones included: deadlines, opening order, offset marks
    /// (a memory bound tests read).
    fn entries(&self) -> (usize, usize, usize) {
        (self.deadline_entries, self.opened.len(), self.marks.len())
    }
}
