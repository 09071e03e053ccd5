"""ELECTRA ExampleBuilder (docs/electra.md#example-builder, #builder-variants): packing, layout, target lengths,
fixed vs ConvBERT-repo segment logic."""

import numpy as np
import pytest

from convbert.data.example_builder import ExampleBuilder

CLS, SEP, T = 101, 102, 20


def _builder(variant="electra", seed=0, max_len=T):
    return ExampleBuilder(max_len, cls_id=CLS, sep_id=SEP, variant=variant, seed=seed)


def _random_documents(seed, num_docs=40, lines=(5, 40), line_len=(3, 30)):
    rng = np.random.default_rng(seed)
    return [
        [list(rng.integers(1000, 2000, rng.integers(*line_len))) for _ in range(rng.integers(*lines))]
        for _ in range(num_docs)
    ]


def _segments(ex):
    """(A, B) token lists of an example, checking the [CLS] A [SEP] (B [SEP]) layout and padding."""
    ids, mask, seg = ex["input_ids"], ex["input_mask"], ex["segment_ids"]
    n = int(mask.sum())
    assert all(a.dtype == np.int32 and a.shape == (len(ids),) for a in ex.values())
    assert (mask[:n] == 1).all() and (mask[n:] == 0).all() and (ids[n:] == 0).all() and (seg[n:] == 0).all()
    a_end = int((seg[:n] == 0).sum())  # [CLS] A [SEP]
    assert (seg[a_end:n] == 1).all() and n - a_end != 1
    assert ids[0] == CLS and ids[a_end - 1] == SEP and ids[n - 1] == SEP
    a, b = list(ids[1 : a_end - 1]), list(ids[a_end : n - 1])
    assert CLS not in a + b and SEP not in a + b
    return a, b


@pytest.mark.parametrize("variant", ["electra", "convbert_repo"])
def test_layout_and_padding(variant):
    examples = list(_builder(variant, max_len=64).build(_random_documents(0)))
    assert len(examples) > 100
    for ex in examples:
        a, b = _segments(ex)
        assert len(a) + len(b) + 2 + bool(b) <= 64


def test_forced_segment_split_both_variants():
    """Lines of 10 tokens with target 20 (first_target 8): each example packs exactly two lines."""
    l1, l2 = list(range(1000, 1010)), list(range(2000, 2010))
    seen = {"electra": set(), "convbert_repo": set()}
    for variant in seen:
        b = _builder(variant, seed=1)
        for _ in range(300):
            b.target_length = T  # ignore the 5% random target lengths here
            assert b.add_line(l1) is None
            a, s = _segments(b.add_line(l2))
            seen[variant].add((tuple(a), tuple(s)))
    cases = {
        "single": ((*l1, *l2[:8]), ()),  # prob 0.1: one segment, truncated to T - 2
        "electra": (tuple(l1), tuple(l2[:7])),  # B truncated to T - |A| - 3
        "repo_reversed": (tuple(l2), tuple(l1[:7])),  # first line too long for A lands in B
        "repo_empty_a": ((), (*l1, *l2)[:17]),  # coin flip sends the second line to B too: A empty
    }
    assert seen["electra"] == {cases["single"], cases["electra"]}
    assert seen["convbert_repo"] == {cases["single"], cases["repo_reversed"], cases["repo_empty_a"]}


def test_variants_segment_statistics():
    """Short multi-line documents: fixed logic gives mostly two segments, the ConvBERT-repo copy mostly one."""
    docs = _random_documents(1, line_len=(3, 20))
    frac = {}
    for variant in ("electra", "convbert_repo"):
        examples = [ex for ex in _builder(variant, max_len=128).build(docs) if ex["input_mask"].sum() == 128]
        frac[variant] = np.mean([ex["segment_ids"].any() for ex in examples])
    assert frac["electra"] > 0.75 and frac["convbert_repo"] < 0.2, frac


def test_accumulate_until_target_and_document_end():
    b = _builder()
    assert b.add_line([5] * 8) is None and b.add_line([]) is None and b.add_line([6] * 8) is None
    ex = b.end_document()
    assert ex["input_mask"].sum() in (18, 19)  # 16 tokens + [CLS][SEP] (+[SEP] with two segments)
    assert b.end_document() is None
    long = _builder().add_line(list(range(1000, 1100)))  # one line over max length: A truncated, no B
    assert _segments(long) == (list(range(1000, 1018)), [])


def test_random_target_length():
    b = _builder(max_len=128)
    targets = []
    for ids in (line for doc in _random_documents(2, num_docs=200) for line in doc):
        if b.add_line(ids) is not None:
            targets.append(b.target_length)
    targets = np.array(targets)
    assert ((targets >= 5) & (targets <= 128)).all()
    assert 0.02 < np.mean(targets != 128) < 0.09


def test_deterministic_for_seed():
    docs = _random_documents(3)
    run = lambda seed: np.stack([ex["input_ids"] for ex in _builder(seed=seed).build(docs)])
    np.testing.assert_array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


def test_bad_variant():
    with pytest.raises(ValueError, match="variant"):
        _builder("bert")
