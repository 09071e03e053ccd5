"""SQuAD loading and featurisation (convbert.squad.data): error messages, answer checks, windows, and every
answer span round-tripping to its text on the committed fixtures (long contexts, window edges, unanswerable
questions, non-ASCII text)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from convbert.squad import data, fixture
from convbert.tokenization import ConvBertTokenizer, load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "squad")
TOKENIZER = ConvBertTokenizer()


def write(path, obj):
    path.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return str(path)


def squad(context, qas):
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def round_trip(examples, **sizes):
    """Featurises for training and evaluation; returns (train, eval, counts) and checks every labelled span."""
    train, counts = data.featurize(examples, TOKENIZER, training=True, **sizes)
    evaluation, _ = data.featurize(examples, TOKENIZER, training=False, **sizes)
    assert np.array_equal(train["input_ids"], evaluation["input_ids"])  # no question was dropped here
    spans = zip(train["example_index"], train["start_positions"], train["end_positions"], strict=True)
    for w, (i, s, e) in enumerate(spans):
        ex = examples[i]
        if s == 0:
            assert e == 0
            continue
        text, start = ex.answers[0]
        span = ex.context[evaluation["offsets"][w, s, 0] : evaluation["offsets"][w, e, 1]]
        assert span == text, (ex.qid, span, text)
        assert evaluation["offsets"][w, s, 0] == start
    return train, evaluation, counts


def test_fixture_is_reproducible_and_matches_the_committed_files(tmp_path):
    for path in fixture.write(str(tmp_path)):
        with open(os.path.join(FIXTURES, os.path.basename(path)), encoding="utf-8") as committed:
            assert Path(path).read_text(encoding="utf-8") == committed.read(), path


@pytest.mark.parametrize(
    "version, name",
    [("v1", "train-v1.1.json"), ("v1", "dev-v1.1.json"), ("v2", "train-v2.0.json"), ("v2", "dev-v2.0.json")],
)
def test_every_fixture_answer_round_trips_through_the_windows(version, name):
    examples = data.load_json(os.path.join(FIXTURES, name), version)
    assert data.check_answers(examples, name) == []
    train, evaluation, counts = round_trip(examples, max_seq_length=128, doc_stride=32, max_query_length=24)
    per_example = np.bincount(train["example_index"])
    assert per_example.max() >= 3  # long passages need several windows
    answered = {i for i, s in zip(train["example_index"], train["start_positions"], strict=True) if s > 0}
    assert answered == {i for i, ex in enumerate(examples) if not ex.is_impossible}  # each answer in a window
    assert counts["windows_without_answer"] > 0 and counts["answer_mismatch"] == 0
    impossible = np.array([examples[i].is_impossible for i in train["example_index"]])
    assert impossible.any() == (version == "v2") and np.array_equal(train["is_impossible"], impossible)
    assert (train["start_positions"][impossible] == 0).all()
    # every context token is the max-context token of exactly one window
    for i in range(len(examples)):
        rows = evaluation["example_index"] == i
        n_tokens = len(TOKENIZER.encode_offsets([examples[i].context])[0][0])
        assert evaluation["max_context"][rows].sum() == n_tokens
    non_ascii = [ex for ex in examples if "nonascii" in ex.qid]
    assert [ex.answers[0][0] for ex in non_ascii] == ["ZOË", "MÜLLER", "RENÉE"]


def test_windows_slide_by_the_stride_and_answers_at_window_edges_round_trip():
    words = [w for w in TOKENIZER.tokens[2000:2300] if w.isalpha()][:60]  # one token each
    context = " ".join(words)
    qas = [
        {
            "id": f"q{i}",
            "question": "which word?",
            "answers": [{"text": words[i], "answer_start": len(" ".join(words[:i])) + (i > 0)}],
        }
        for i in range(60)
    ]
    examples = data.parse_squad(squad(context, qas), "v1", "edge")
    sizes = dict(max_seq_length=24, doc_stride=8, max_query_length=8)  # question 3 tokens -> 18 per window
    spans = data.doc_spans(60, 18, 8)
    assert spans == [(0, 18), (8, 18), (16, 18), (24, 18), (32, 18), (40, 18), (48, 12)]  # the last one ends at 60
    train, evaluation, _ = round_trip(examples, **sizes)
    q = 3 + 2  # [CLS] which word ? [SEP]
    assert {int(s) for s in train["start_positions"] if s} == set(range(q, q + 18))  # both window edges occur
    # the max-context window: the most context on the shorter side, + 0.01 x window length (token 12: 5 left of
    # the end of window 0 beats 4 after the start of window 1; token 13 the other way round)
    best = data.max_context_window(spans, 60)
    assert (best[0], best[12], best[13], best[47], best[59]) == (0, 0, 1, 5, 6)
    windows = evaluation["example_index"] == 0
    assert evaluation["max_context"][windows][:, q : q + 18].sum(axis=1).tolist() == np.bincount(best).tolist()


def test_question_truncation_and_special_layout():
    ex = data.Example("q", "one two three four five six", "alpha beta", (("beta", 6),))
    train, _ = data.featurize([ex], TOKENIZER, max_seq_length=16, doc_stride=4, max_query_length=3, training=True)
    ids = train["input_ids"][0]
    assert TOKENIZER.decode(ids[:9]) == "[CLS] one two three [SEP] alpha beta [SEP] [PAD]"
    assert train["token_type_ids"][0][:8].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert (train["start_positions"][0], train["end_positions"][0]) == (6, 6)
    with pytest.raises(ValueError, match="leaves no room for the context"):
        data.featurize([ex], TOKENIZER, max_seq_length=8, doc_stride=4, max_query_length=5, training=True)


def test_mismatched_answers_are_counted_and_dropped_from_training_never_shifted(caplog):
    context = "The cat sat on the mat."
    qas = [
        {"id": "ok", "question": "where?", "answers": [{"text": "the mat", "answer_start": 15}]},
        {"id": "shifted", "question": "who?", "answers": [{"text": "cat", "answer_start": 3}]},
        {"id": "wrong", "question": "what?", "answers": [{"text": "dog", "answer_start": 4}]},
    ]
    examples = data.parse_squad(squad(context, qas), "v1", "x.json")
    assert [(q, t) for q, t, _ in data.check_answers(examples, "x.json")] == [("shifted", "cat"), ("wrong", "dog")]
    assert "x.json: 2 answer(s) do not match" in caplog.text
    train, counts = data.featurize(examples, TOKENIZER, 32, 8, 8, training=True)
    assert counts["answer_mismatch"] == 2 and train["example_index"].tolist() == [0]
    evaluation, _ = data.featurize(examples, TOKENIZER, 32, 8, 8, training=False)
    assert evaluation["example_index"].tolist() == [0, 1, 2]  # evaluation keeps every question


def test_malformed_files_name_the_file_and_the_failing_key(tmp_path):
    ok = {"id": "a", "question": "q?", "answers": [{"text": "x", "answer_start": 0}]}
    cases = [
        ({"version": "1.1"}, r"bad.json: missing key 'data'"),
        ({"data": [{"title": "t"}]}, r"bad.json: data\[0\]: missing key 'paragraphs'"),
        (squad("x", [ok, {"id": "b", "answers": []}]), r"bad.json: data\[0\].paragraphs\[0\].qas\[1\]: missing key"),
        (
            squad("x", [{**ok, "answers": [{"text": "x", "answer_start": "0"}]}]),
            r"qas\[0\].answers\[0\].answer_start: expected int, got str",
        ),
        (squad("x", [{**ok, "answers": []}]), r"qas\[0\].answers: empty .*use version v2"),
    ]
    for obj, message in cases:
        with pytest.raises(ValueError, match=message):
            data.load_json(write(tmp_path / "bad.json", obj), "v1")
    with pytest.raises(ValueError, match=r"bad.json: not valid JSON"):
        data.load_json(write(tmp_path / "bad.json", '{"data": ['), "v1")
    with pytest.raises(FileNotFoundError, match=r"dev-v2\.0\.json"):
        data.load_split("v2", "dev", str(tmp_path))
    v2 = data.load_json(write(tmp_path / "v2.json", squad("x", [{**ok, "answers": [], "is_impossible": True}])), "v2")
    assert v2[0].is_impossible and v2[0].answers == ()


def test_hub_rows_become_examples(monkeypatch):
    import datasets

    rows = [
        {"id": "1", "context": "ab cd", "question": "q", "answers": {"text": ["cd"], "answer_start": [3]}},
        {"id": "2", "context": "ab cd", "question": "q", "answers": {"text": [], "answer_start": []}},
    ]
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda name, split: rows if (name, split) == ("rajpurkar/squad_v2", "validation") else None,
    )
    examples = data.load_split("v2", "dev", "")
    assert examples == [data.Example("1", "q", "ab cd", (("cd", 3),), False), data.Example("2", "q", "ab cd", (), True)]


def test_pretraining_tokenizer_folder_gives_the_same_offsets(tmp_path):
    """The tokenizer a pretraining workdir saves, loaded as fine-tuning loads it; special-token strings in the text
    are ordinary characters with their own spans."""
    TOKENIZER.save(str(tmp_path))
    texts = ["Zoë's café, 1895-1943!", 'Who says "Où est"? [SEP] here']
    ours = load_tokenizer(str(tmp_path)).encode_offsets(texts)
    assert ours == TOKENIZER.encode_offsets(texts)
    _, offsets = ours[0]
    assert [texts[0][a:b] for a, b in offsets][:4] == ["Zoë", "'", "s", "café"]
    assert [texts[1][a:b] for a, b in ours[1][1]][-4:] == ["[", "SEP", "]", "here"]


def test_sentencepiece_offsets_round_trip_every_answer(tmp_path):
    """SentencePiece character offsets (issue 23; the fixture's non-ASCII paragraph included): every answer of the
    v1.1 fixture the pieces can delimit maps back to its text and offset."""
    from convbert.data.sources import DEMO_CORPUS_DIR
    from convbert.tokenization import train_sentencepiece

    sp = train_sentencepiece([os.path.join(DEMO_CORPUS_DIR, "hamlet.txt")], str(tmp_path / "sp"), vocab_size=400)
    examples = data.load_json(os.path.join(FIXTURES, data.FILES["v1"]["train"]), "v1")
    assert any(not ex.context.isascii() for ex in examples)
    sizes = dict(max_seq_length=128, doc_stride=32, max_query_length=24)
    train, _ = data.featurize(examples, sp, training=True, **sizes)
    evaluation, _ = data.featurize(examples, sp, training=False, **sizes)
    found = 0
    spans = zip(train["example_index"], train["start_positions"], train["end_positions"], strict=True)
    for w, (i, s, e) in enumerate(spans):
        if s:
            text, start = examples[i].answers[0]
            assert examples[i].context[evaluation["offsets"][w, s, 0] : evaluation["offsets"][w, e, 1]] == text
            assert evaluation["offsets"][w, s, 0] == start
            found += not examples[i].context.isascii()
    assert found
