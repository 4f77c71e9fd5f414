"""Hypothesis strategies shared by the test modules."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


def json_values(max_int: int, max_text: int, max_leaves: int) -> st.SearchStrategy[Any]:
    """Any JSON value (nested lists and objects of null, booleans, integers within
    +-``max_int``, finite floats and short strings)."""
    return st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-max_int, max_int)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=max_text),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=max_leaves,
    )
