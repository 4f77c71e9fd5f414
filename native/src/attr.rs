//! Reading and writing the fields of the worker's structs (events, finished requests,
//! fetched records) straight from their slots, where `getattr` goes through the type's
//! lookup and the descriptor protocol each time: about a tenth of the worker's CPU at
//! full load was in the `getattr` calls of this crate.
//!
//! Each call site (`attr!`, `set_attr!`) keeps a small cache: for the last few types it
//! met, where in an instance the attribute's slot is, or that it has none. A slot is
//! used only where `getattr` would have read it: the type's attribute lookup is
//! Python's own (`PyObject_GenericGetAttr`), and the first attribute of that name along
//! its MRO is a member descriptor of an object field (`T_OBJECT_EX` or `T_OBJECT`,
//! which a `__slots__` entry and a `msgspec.Struct` field are) that audits no reads.
//! An empty slot, a type of any other kind and an attribute of any other kind go
//! through `getattr` / `setattr` as before, errors included.

use std::sync::atomic::{AtomicIsize, AtomicPtr, AtomicU32, AtomicUsize, Ordering::Relaxed};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

/// How many types one call site remembers (an event site meets a kind and its traced
/// form; more types than this are looked up again in turn).
const WAYS: usize = 4;
/// A type's entry when the attribute is not a plain slot: `getattr` / `setattr`.
const GENERIC: isize = -1;
/// `PyMemberDef.flags` this leaves to Python: the member is read-only (`READONLY`), or
/// reading it raises an audit event (`PY_AUDIT_READ`).
const READONLY: i32 = 1;
const AUDIT_READ: i32 = 2;
/// `PyMemberDef.type_code` of an object field that reads None when empty (`T_OBJECT`).
const T_OBJECT: i32 = 6;

/// One call site's cache. Every access holds the GIL (CPython 3.11 has no other mode),
/// so the atomics are plain cells that statics may hold.
pub struct Site {
    types: [AtomicPtr<ffi::PyTypeObject>; WAYS],
    // The type's version tag when its entry was made: CPython gives a type a new one
    // (or none, 0) whenever it or a base changes, so an entry is used only while its
    // type's attributes are as they were (the same rule as CPython's own lookup cache).
    tags: [AtomicU32; WAYS],
    offsets: [AtomicIsize; WAYS],
    next: AtomicUsize,
}

impl Site {
    #[allow(clippy::new_without_default)]
    pub const fn new() -> Self {
        Site {
            types: [const { AtomicPtr::new(std::ptr::null_mut()) }; WAYS],
            tags: [const { AtomicU32::new(0) }; WAYS],
            offsets: [const { AtomicIsize::new(GENERIC) }; WAYS],
            next: AtomicUsize::new(0),
        }
    }

    /// Where `name` lives in instances of `obj`'s type: the slot's offset, or
    /// `GENERIC`.
    fn offset(&self, obj: &Bound<'_, PyAny>, name: &Bound<'_, PyString>, write: bool) -> isize {
        // SAFETY: `obj` is a live object; its type pointer is valid while it lives.
        let ty = unsafe { ffi::Py_TYPE(obj.as_ptr()) };
        // SAFETY: the live type's field.
        let tag = unsafe { (*ty).tp_version_tag };
        let mut way = None;
        for (i, t) in self.types.iter().enumerate() {
            if t.load(Relaxed) == ty {
                if tag != 0 && self.tags[i].load(Relaxed) == tag {
                    return self.offsets[i].load(Relaxed);
                }
                way = Some(i); // the type changed since: looked up again in its place
                break;
            }
        }
        // A type without a tag (0) is looked up again at each access, which is right if
        // slow: CPython tags a type at its own first lookup of one of its attributes,
        // which the worker's Python code makes for these types. The walk below runs no
        // Python code, so the tag read above is still the type's.
        let offset = slot_offset(ty, name, write);
        let way = way.unwrap_or_else(|| {
            let way = self.next.load(Relaxed) % WAYS;
            self.next.store(way + 1, Relaxed);
            way
        });
        // The entry holds a reference to its type, so that the address stays the type's
        // (a freed type's address could be another's); the one it replaces lets go, last,
        // as that may run Python code.
        // SAFETY: `ty` is live (see above); the old entry's reference is the one it took.
        unsafe {
            self.tags[way].store(tag, Relaxed);
            self.offsets[way].store(offset, Relaxed);
            if self.types[way].load(Relaxed) != ty {
                ffi::Py_INCREF(ty.cast());
                let old = self.types[way].swap(ty, Relaxed);
                if !old.is_null() {
                    ffi::Py_DECREF(old.cast());
                }
            }
        }
        offset
    }

    /// `getattr(obj, name)`.
    pub fn get<'py>(
        &self,
        obj: &Bound<'py, PyAny>,
        name: &Bound<'py, PyString>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let offset = self.offset(obj, name, false);
        if offset != GENERIC {
            // SAFETY: `offset` is that of an object slot of `obj`'s type (`slot_offset`),
            // which holds a reference or NULL.
            let value = unsafe {
                *obj.as_ptr()
                    .cast::<u8>()
                    .offset(offset)
                    .cast::<*mut ffi::PyObject>()
            };
            if !value.is_null() {
                // SAFETY: a live reference held by `obj`; the Bound takes its own.
                return Ok(unsafe { Bound::from_borrowed_ptr(obj.py(), value) });
            }
        }
        obj.getattr(name)
    }

    /// `setattr(obj, name, value)`.
    pub fn set(
        &self,
        obj: &Bound<'_, PyAny>,
        name: &Bound<'_, PyString>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let offset = self.offset(obj, name, true);
        if offset == GENERIC {
            return obj.setattr(name, value);
        }
        // SAFETY: as in `get`; what `PyMember_SetOne` does for an object slot: the new
        // reference in, then the old one released.
        unsafe {
            let slot = obj
                .as_ptr()
                .cast::<u8>()
                .offset(offset)
                .cast::<*mut ffi::PyObject>();
            let old = *slot;
            ffi::Py_INCREF(value.as_ptr());
            *slot = value.as_ptr();
            ffi::Py_XDECREF(old);
        }
        Ok(())
    }
}

/// The offset of `name`'s slot in instances of `ty` (`obj`'s type), or `GENERIC`;
/// `write`: for `setattr`, which must be Python's own too.
fn slot_offset(ty: *mut ffi::PyTypeObject, name: &Bound<'_, PyString>, write: bool) -> isize {
    // SAFETY: `ty` is a live type; its MRO tuple, the dicts of its bases and what they
    // hold are borrowed while nothing else runs (a str key's lookup runs no Python
    // code), and a descriptor's fields are read only once its type is known.
    unsafe {
        // Compared as addresses: libpython's functions, each of one address.
        let getattro = (*ty).tp_getattro.map(|f| f as *const () as usize);
        let setattro = (*ty).tp_setattro.map(|f| f as *const () as usize);
        if getattro != Some(ffi::PyObject_GenericGetAttr as *const () as usize)
            || write && setattro != Some(ffi::PyObject_GenericSetAttr as *const () as usize)
        {
            return GENERIC;
        }
        // What `PyObject_GenericGetAttr` finds: the first attribute of that name along
        // the MRO (a member descriptor, a data descriptor, wins over any instance dict).
        let mro = (*ty).tp_mro;
        if mro.is_null() {
            return GENERIC;
        }
        let mut descr = std::ptr::null_mut();
        for i in 0..ffi::PyTuple_GET_SIZE(mro) {
            let base = ffi::PyTuple_GET_ITEM(mro, i).cast::<ffi::PyTypeObject>();
            let dict = (*base).tp_dict;
            if dict.is_null() {
                continue;
            }
            descr = ffi::PyDict_GetItemWithError(dict, name.as_ptr());
            if !descr.is_null() {
                break;
            }
            if !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
                return GENERIC;
            }
        }
        if descr.is_null() || ffi::Py_TYPE(descr) != std::ptr::addr_of_mut!(ffi::PyMemberDescr_Type)
        {
            return GENERIC;
        }
        // pyo3 types the field as a PyGetSetDef; CPython's is a PyMemberDef.
        let def = (*descr.cast::<ffi::PyMemberDescrObject>())
            .d_member
            .cast::<ffi::PyMemberDef>();
        let object = (*def).type_code == ffi::Py_T_OBJECT_EX || (*def).type_code == T_OBJECT;
        if !object || (*def).flags & (READONLY | AUDIT_READ) != 0 {
            return GENERIC;
        }
        (*def).offset
    }
}

/// `getattr($obj, $name)` through this call site's `Site`.
macro_rules! attr {
    ($obj:expr, $name:literal) => {{
        static SITE: $crate::attr::Site = $crate::attr::Site::new();
        let obj = $obj;
        SITE.get(obj, pyo3::intern!(obj.py(), $name))
    }};
}

/// `setattr($obj, $name, $value)` through this call site's `Site`.
macro_rules! set_attr {
    ($obj:expr, $name:literal, $value:expr) => {{
        static SITE: $crate::attr::Site = $crate::attr::Site::new();
        let obj = $obj;
        SITE.set(obj, pyo3::intern!(obj.py(), $name), $value)
    }};
}

/// The sites of `slot_get` and `slot_set`, one per attribute name (a site is for one
/// name, as a call site is).
static TEST_SITES: std::sync::Mutex<Vec<(String, &'static Site)>> =
    std::sync::Mutex::new(Vec::new());

fn test_site(name: &Bound<'_, PyString>) -> PyResult<&'static Site> {
    let name = name.to_str()?;
    let mut sites = TEST_SITES.lock().unwrap();
    if let Some((_, site)) = sites.iter().find(|(n, _)| n == name) {
        return Ok(site);
    }
    let site: &'static Site = Box::leak(Box::new(Site::new()));
    sites.push((name.to_owned(), site));
    Ok(site)
}

/// `getattr(obj, name)` as this crate's call sites read it (for the tests: one site per
/// name, kept across calls).
#[pyfunction]
pub fn slot_get<'py>(
    obj: &Bound<'py, PyAny>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    test_site(name)?.get(obj, name)
}

/// `setattr(obj, name, value)` as this crate's call sites write it (for the tests).
#[pyfunction]
pub fn slot_set(
    obj: &Bound<'_, PyAny>,
    name: &Bound<'_, PyString>,
    value: &Bound<'_, PyAny>,
) -> PyResult<()> {
    // A site of its own beside the readers' (a write site checks more).
    let key = PyString::new(obj.py(), &format!("={}", name.to_str()?));
    test_site(&key)?.set(obj, name, value)
}
