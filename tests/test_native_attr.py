"""The compiled code's reads and writes of attributes from their slots
(``native/src/attr.rs``): each call site remembers, for the last few types it met, where
an attribute's slot is, and reads or writes it there only where ``getattr`` and
``setattr`` would have; everything else goes through them. ``slot_get`` and ``slot_set``
are such call sites, one per attribute name, kept across calls as the crate's are."""

from __future__ import annotations

import contextlib
import gc
import sys
import weakref
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.events import FinishedRequest, PredictionEvent

fusion_native = pytest.importorskip("fusion_native")
slot_get = fusion_native.slot_get
slot_set = fusion_native.slot_set


class Slotted:
    __slots__ = ("probs", "ts")


class Shadowed(Slotted):
    """A subclass whose ``ts`` is a property: reads go through it, not the base's slot."""

    __slots__ = ()

    @property  # type: ignore[override]
    def ts(self) -> str:
        return "from the property"


def shadowed() -> Shadowed:
    """A ``Shadowed`` whose base slot holds a value, which a read of the slot would give."""
    s = Shadowed()
    Slotted.__dict__["ts"].__set__(s, "hidden in the slot")
    return s


CUSTOM = {"ts": "custom ts", "probs": "custom probs", "label": "custom label"}


class Custom:
    """Reads all go through its own ``__getattribute__``."""

    __slots__ = ("ts",)

    def __getattribute__(self, name: str) -> Any:
        return CUSTOM.get(name, name)


def custom() -> Custom:
    c = Custom()
    object.__setattr__(c, "ts", "in the slot")
    return c


class Padded:
    __slots__ = ("a_pad", "ts")  # in sorted order (as CPython lays them out), ts second


class Meta(type):
    """A metaclass whose ``ts`` (a data descriptor, which the class's attribute lookup
    finds first) is another class's member descriptor."""

    @property
    def ts(cls) -> Any:
        return Padded.__dict__["ts"]


class Misled(metaclass=Meta):
    __slots__ = ("ts", "z_pad")  # its ``z_pad`` is where ``Padded`` keeps ``ts``


class Plain:
    """No slots: an instance dict."""

    def __init__(self) -> None:
        self.ts = 5
        self.probs = b"plain"


class Frozen(msgspec.Struct, frozen=True):
    ts: int


def slotted(ts: Any, probs: Any = None) -> Slotted:
    s = Slotted()
    s.ts = ts
    if probs is not None:
        s.probs = probs
    return s


def traceparent(digit: str) -> str:
    return f"00-{digit * 32}-{'9' * 16}-01"


def objects() -> list[Any]:
    """Instances of more types than a call site remembers (four), the events' kinds
    among them, each with ``ts`` and ``probs`` of one of the kinds ``getattr`` reads."""
    return [
        PredictionEvent("r", "a", 1, probs=[0.5, 0.5]),
        PredictionEvent("r", "a", 2, label=1),
        PredictionEvent("r", "a", 3, score=0.5, traceparent=traceparent("1")),
        PredictionEvent("r", "a", 4, probs=[0.25, 0.75], traceparent=traceparent("2")),
        PredictionEvent("r", "a", 5, text="yes"),
        slotted(6, b"slot"),
        shadowed(),
        custom(),
        Plain(),
    ]


def read(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError as e:
        return ("AttributeError", str(e))


def read_slot(obj: Any, name: str) -> Any:
    try:
        return slot_get(obj, name)
    except AttributeError as e:
        return ("AttributeError", str(e))


NAMES = st.sampled_from(["ts", "probs", "label", "traceparent"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 8), NAMES), max_size=60))
def test_reads_what_getattr_reads_in_any_order_of_types(reads: list[tuple[int, str]]) -> None:
    """Whatever the order in which a call site meets the types (more of them than it
    remembers), it reads the very object getattr reads, or raises the same error."""
    objs = objects()
    for i, name in reads:
        want, got = read(objs[i], name), read_slot(objs[i], name)
        assert got == want
        assert isinstance(want, tuple) or got is want


def test_an_empty_slot_raises_as_getattr_does() -> None:
    """A slot never set reads as getattr reads it: AttributeError."""
    s = Slotted()
    slot_get(slotted(1, b"set"), "probs")  # the site now knows Slotted's slot
    with pytest.raises(AttributeError, match="probs"):
        slot_get(s, "probs")


def test_a_property_of_a_subclass_wins_over_the_base_slot() -> None:
    """After reading the base type's slot, a subclass whose attribute is a property is
    read through the property."""
    assert slot_get(slotted(7), "ts") == 7
    assert slot_get(shadowed(), "ts") == "from the property"


def test_a_metaclass_attribute_is_not_taken_for_the_slot() -> None:
    """Where the class's attribute lookup gives a member descriptor of a type that is not
    one of its bases (here through its metaclass), the instance is read by getattr."""
    obj = Misled()
    obj.ts, obj.z_pad = "own slot", "padding"
    assert type(obj).ts is Padded.__dict__["ts"]
    for _ in range(2):
        assert slot_get(obj, "ts") == "own slot"


def test_a_class_changed_after_a_read_is_read_as_changed() -> None:
    """A type whose attribute is replaced after the site remembered its slot is read
    as getattr reads it then (through the new attribute)."""

    class Patched:
        __slots__ = ("ts",)

    obj = Patched()
    obj.ts = "in the slot"
    assert slot_get(obj, "ts") == "in the slot"
    Patched.ts = property(lambda self: "patched")  # type: ignore[assignment,method-assign]
    assert slot_get(obj, "ts") == "patched"


def test_a_finished_request_reads_its_fields() -> None:
    """The finished request's fields, as the result writer reads them."""
    members = {"a": PredictionEvent("r", "a", 1, probs=[0.5, 0.5])}
    req = FinishedRequest("r", members, 1, 2, 3, False)
    for _ in range(2):
        assert slot_get(req, "members") is members
        assert slot_get(req, "fused_ts") == 3
        assert slot_get(req, "decided") is False


def test_writes_what_setattr_writes_and_releases_the_old_value() -> None:
    """A write through the slot stores the new value and lets go of the old one."""

    class Value:
        pass

    s = slotted(1, Value())
    gone = weakref.ref(s.probs)
    for value in (b"first", b"second"):
        slot_set(s, "probs", value)
        assert s.probs is value
    gc.collect()
    assert gone() is None


def test_a_write_where_setattr_refuses_raises_as_setattr_does() -> None:
    """A frozen struct's field is not written through its slot: the error is
    setattr's."""
    with pytest.raises(AttributeError, match="immutable"):
        slot_set(Frozen(1), "ts", 2)


def test_a_type_a_site_forgets_is_released() -> None:
    """A call site holds a reference to each type it remembers, and lets go of it when
    four later types have taken its place."""

    class Passing:
        __slots__ = ("forgotten",)

    obj = Passing()
    obj.forgotten = 1
    before = sys.getrefcount(Passing)
    slot_get(obj, "forgotten")
    assert sys.getrefcount(Passing) == before + 1
    for cls in (Slotted, Shadowed, Plain, Custom):
        with contextlib.suppress(AttributeError):
            slot_get(cls.__new__(cls), "forgotten")
    assert sys.getrefcount(Passing) == before
