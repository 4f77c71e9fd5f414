"""Text fusion strategies: text_vote (weighted vote over normalised answers, ties to the
model order) and consensus (MBR: equals a brute-force reference built on sacrebleu's
chrF); the normalisation steps one by one."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sacrebleu.metrics import CHRF

from worker.fusion.similarity import token_f1, wer
from worker.fusion.text import TextOptions, fuse_text, fuse_text_batch
from worker.fusion.textnorm import NONE, TextNormalisation, _punctuation_table, normalise, prepare

SACREBLEU_CHRF = CHRF()
RAW = TextOptions(normalisation=NONE)

# -- normalisation ------------------------------------------------------------------------


def test_nfkc_turns_compatibility_forms_into_plain_ones() -> None:
    """NFKC: full-width letters, ligatures and a non-breaking space become plain."""
    only = TextNormalisation(nfkc=True, case=False, punctuation=False, whitespace=False)
    assert normalise("\uff30\uff41\uff52\uff49\uff53 \ufb01ne\u00a0x", only) == "Paris fine x"


def test_case_folds_unicode_case() -> None:
    """case: casefold, so that "Straße" and "STRASSE" are one answer."""
    only = TextNormalisation(nfkc=False, case=True, punctuation=False, whitespace=False)
    assert normalise("Straße", only) == normalise("STRASSE", only) == "strasse"


def test_punctuation_removes_unicode_punctuation_only() -> None:
    """punctuation: P* characters go (ASCII and others), symbols such as + and $ stay."""
    only = TextNormalisation(nfkc=False, case=False, punctuation=True, whitespace=False)
    assert normalise("«Paris», c'est ça! 1+1=$2…", only) == "Paris cest ça 1+1=$2"


def test_whitespace_collapses_runs_and_strips() -> None:
    """whitespace: runs of any whitespace become one space; the ends are stripped."""
    only = TextNormalisation(nfkc=False, case=False, punctuation=False, whitespace=True)
    assert normalise("  a \t\n b\u3000c  ", only) == "a b c"


def test_no_step_leaves_the_text_alone() -> None:
    """With every step off the text is unchanged."""
    text = " «\uff30aris»  "
    assert normalise(text, NONE) == text


def test_prepare_builds_the_punctuation_table() -> None:
    """prepare() builds the table at start, so normalise() later finds it cached."""
    _punctuation_table.cache_clear()
    prepare(TextNormalisation(punctuation=False))
    assert _punctuation_table.cache_info().currsize == 0
    prepare(TextNormalisation())
    assert _punctuation_table.cache_info().currsize == 1


def test_steps_by_name() -> None:
    """TextNormalisation.of builds from names and refuses an unknown one by name."""
    assert TextNormalisation.of(["case"]).steps == ("case",)
    with pytest.raises(ValueError, match="'lower'"):
        TextNormalisation.of(["lower"])


# -- text_vote ------------------------------------------------------------------------------


def test_text_vote_counts_normalised_answers_as_one() -> None:
    """ "Paris." and " paris" are one answer: 0.4 + 0.4 beats 0.5; the fused text is the
    own text of the heaviest voter."""
    result = fuse_text(["Paris.", " PARIS", "London"], [0.3, 0.4, 0.5], "text_vote")
    assert result is not None
    assert (result.text, result.chosen) == (" PARIS", 1)
    assert result.similarities == (1.0, 1.0, 0.0)
    assert result.agreement == pytest.approx(0.7 / 1.2)


def test_text_vote_tie_goes_to_the_model_order() -> None:
    """Equal totals: the answer whose first voter comes first in the model order wins."""
    result = fuse_text(["b", "a", "b", "a"], [1.0, 1.0, 1.0, 1.0], "text_vote")
    assert result is not None
    assert (result.text, result.chosen) == ("b", 0)
    flipped = fuse_text(["a", "b", "b", "a"], [1.0, 1.0, 1.0, 1.0], "text_vote")
    assert flipped is not None
    assert (flipped.text, flipped.chosen) == ("a", 0)


def test_text_vote_heaviest_voter_ties_go_to_the_model_order() -> None:
    """Two voters of the winner with equal weight: the first in model order is chosen."""
    result = fuse_text(["x", "Yes", "yes!"], [0.1, 0.45, 0.45], "text_vote")
    assert result is not None
    assert (result.text, result.chosen) == ("Yes", 1)


def test_text_vote_without_normalisation_keeps_answers_apart() -> None:
    """With no normalisation "Paris" and "paris" are two answers."""
    result = fuse_text(["Paris", "paris", "paris"], [0.5, 0.3, 0.3], "text_vote", RAW)
    assert result is not None
    assert result.text == "paris"


def test_missing_members_and_zero_weight() -> None:
    """Missing members do not vote and get no similarity; no present weight -> None."""
    result = fuse_text([None, "a", "b"], [5.0, 1.0, 2.0], "text_vote")
    assert result is not None
    assert (result.text, result.similarities) == ("b", (None, 0.0, 1.0))
    assert fuse_text([None, "a", "b"], [5.0, 0.0, 0.0], "text_vote") is None
    assert fuse_text([None, None], [1.0, 1.0], "consensus") is None


# -- consensus ------------------------------------------------------------------------------


def brute_force_pick(texts: list[str | None], weights: list[float]) -> tuple[int, list[float]]:
    """MBR written out: per present candidate, the weighted mean of sacrebleu's chrF
    against each other present member; the first best in model order."""
    scores = []
    for i, hyp in enumerate(texts):
        if hyp is None:
            scores.append(float("-inf"))
            continue
        num = den = 0.0
        for j, ref in enumerate(texts):
            if j != i and ref is not None:
                num += weights[j] * SACREBLEU_CHRF.sentence_score(hyp, [ref]).score / 100
                den += weights[j]
        scores.append(num / den if den > 0 else 1.0)
    best = max(scores)
    return next(i for i, s in enumerate(scores) if s >= best - 1e-12), scores


WORDS = ["the", "cat", "sat", "on", "a", "mat", "mats", "hat", "at", "dog"]
candidate = st.lists(st.sampled_from(WORDS), min_size=1, max_size=8).map(" ".join)


@given(
    st.lists(candidate | st.none(), min_size=1, max_size=6).filter(
        lambda ts: any(t is not None for t in ts)
    ),
    st.data(),
)
@settings(max_examples=60)
def test_consensus_equals_a_brute_force_mbr(texts: list[str | None], data: st.DataObject) -> None:
    """The consensus pick is the brute-force MBR candidate (chrF, sacrebleu), ties to the
    model order, and its scores equal the brute-force scores."""
    weights = data.draw(
        st.lists(
            st.sampled_from([0.5, 1.0]) | st.floats(0.01, 5),
            min_size=len(texts),
            max_size=len(texts),
        )
    )
    result = fuse_text(texts, weights, "consensus", RAW)
    assert result is not None
    chosen, scores = brute_force_pick(texts, weights)
    assert result.chosen == chosen
    assert result.text == texts[chosen]
    for ours, theirs, text in zip(result.scores, scores, texts, strict=True):
        assert (ours is None) == (text is None)
        if ours is not None:
            assert abs(ours - theirs) <= 1e-12


def test_consensus_picks_the_central_candidate() -> None:
    """Three close variants and one outlier: a variant wins, the outlier scores lowest
    and the chosen one's similarity to itself is 1."""
    texts = ["the cat sat on the mat", "the cat sat on a mat", "a cat sat on the mat", "zzz"]
    result = fuse_text(texts, [1.0, 1.0, 1.0, 1.0], "consensus")
    assert result is not None
    assert result.chosen in (0, 1, 2)
    assert result.similarities[result.chosen] == 1.0
    assert min(s for s in result.scores if s is not None) == result.scores[3]


def test_consensus_ties_go_to_the_model_order() -> None:
    """Identical candidates score alike: the first in model order is chosen."""
    result = fuse_text(["b a", "a b", "a b", "b a"], [1.0] * 4, "consensus")
    assert result is not None
    assert result.chosen == 0


def test_the_only_weighted_member_is_chosen() -> None:
    """If one member alone has weight, it is all the evidence: it wins."""
    result = fuse_text(["x y z", "a b c", "a b c"], [1.0, 0.0, 0.0], "consensus")
    assert result is not None
    assert (result.chosen, result.agreement) == (0, 1.0)


@pytest.mark.parametrize(
    ("name", "measure"),
    [("token_f1", token_f1), ("wer", lambda h, r: max(0.0, 1 - wer(h, r)))],
)
def test_consensus_with_other_similarities(name: str, measure: object) -> None:
    """token_f1 and wer options: the member similarities are those measures against
    the chosen text."""
    texts = ["the cat sat", "the cat sat down", "a dog ran off fast"]
    result = fuse_text(texts, [1.0, 1.0, 1.0], "consensus", TextOptions(similarity=name))
    assert result is not None
    assert callable(measure)
    for text, sim in zip(texts, result.similarities, strict=True):
        assert sim == pytest.approx(measure(text, result.text))


def test_batch_with_per_request_weights() -> None:
    """A batch fuses each request alone; (n, m) weights apply per request."""
    texts = [["a", "b", "b"], ["a", "b", "b"]]
    results = fuse_text_batch(texts, [[5.0, 1.0, 1.0], [1.0, 1.0, 1.0]], "text_vote")
    assert [r.text if r else None for r in results] == ["a", "b"]


def test_bad_arguments_are_refused() -> None:
    """Unknown strategy or similarity, negative weights: ValueError naming the value."""
    with pytest.raises(ValueError, match="'vote'"):
        fuse_text(["a"], [1.0], "vote")
    with pytest.raises(ValueError, match="'bleu'"):
        fuse_text(["a"], [1.0], "consensus", TextOptions(similarity="bleu"))
    with pytest.raises(ValueError, match="weights"):
        fuse_text(["a"], [-1.0], "consensus")
