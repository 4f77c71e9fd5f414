"""Consensus does not collapse whitespace before its similarities (a saving on long
texts): every similarity ignores how whitespace runs, so the result is the one of the
collapsed texts. Hypothesis with the project's fixed seeds."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.fusion.text import TextOptions, fuse_text_batch

WORDS = st.sampled_from(["the", "cat", "sat", "on", "a", "mat", "é", "東京", "ok!"])
SPACES = st.sampled_from([" ", "  ", "\t", "\n ", "\u3000", "\x1c"])


@st.composite
def spaced(draw: st.DrawFn) -> tuple[str, str]:
    """A text with any whitespace runs, and its collapsed form."""
    words = draw(st.lists(WORDS, min_size=1, max_size=8))
    runs = draw(st.lists(SPACES, min_size=len(words) + 1, max_size=len(words) + 1))
    text = runs[0] + "".join(w + r for w, r in zip(words, runs[1:], strict=True))
    return text, " ".join(words)


@given(st.lists(spaced(), min_size=2, max_size=5), st.sampled_from(["chrf", "token_f1", "wer"]))
@settings(max_examples=150)
def test_consensus_scores_ignore_whitespace_runs(
    members: list[tuple[str, str]], similarity: str
) -> None:
    """Scores, similarities, agreement and the chosen member are those of the texts with
    their whitespace collapsed."""
    weights = [1.0 + i for i in range(len(members))]
    options = TextOptions(similarity=similarity)
    raw = fuse_text_batch([[m[0] for m in members]], weights, "consensus", options)[0]
    collapsed = fuse_text_batch([[m[1] for m in members]], weights, "consensus", options)[0]
    assert raw is not None
    assert collapsed is not None
    assert raw.chosen == collapsed.chosen
    assert raw.scores == collapsed.scores
    assert raw.similarities == collapsed.similarities
    assert raw.agreement == collapsed.agreement
