"""GLUE loaders on fixtures in the original download layout, featurisation
(docs/recipes.md#glue-inputs) and bad-input errors."""

import os
import shutil

import numpy as np
import pytest

from convbert.glue import data
from convbert.glue.tasks import TASK_CHOICES, TASKS, TRANSFER_TASKS, get_task, task_names

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "glue")


def load(task_name, split_name="train", data_dir=FIXTURES, strict=False):
    task = TASKS[task_name]
    split = {"train": task.train, **{s.name: s for s in (*task.dev.values(), *task.test.values())}}[split_name]
    return data.load_tsv_split(data_dir, task, split, strict)


class WordTokenizer:
    """Whitespace tokenizer with the part of the `TextTokenizer` interface `featurize` uses: word 'wN' -> id N."""

    cls_token_id, sep_token_id, pad_token_id = 101, 102, 0

    def encode_batch(self, texts):
        return [[int(w[1:]) for w in t.split()] for t in texts]


def words(*ids):
    return " ".join(f"w{i}" for i in ids)


# ---- loaders --------------------------------------------------------------------------------


def test_every_fixture_split_loads():
    counts = {}
    for task in TASKS.values():
        for split in (task.train, *task.dev.values(), *task.test.values()):
            ex = data.load_tsv_split(FIXTURES, task, split)
            assert len(ex) == len(ex.index) > 0
            assert (ex.text_b is not None) == task.is_pair
            labelled = split.columns.label is not None
            assert (ex.labels is not None) == labelled, (task.name, split.name)
            counts[task.name, split.name] = len(ex)
    assert counts["cola", "train"] == 6 and counts["mnli", "dev_matched"] == 3
    assert counts["mnli", "dev_mismatched"] == 4 and counts["mnli", "diagnostic"] == 4


def test_cola_has_no_header_and_four_columns():
    ex = load("cola")
    assert ex.text_a[0] == "Our friends won't buy this analysis, let alone the next one we propose."
    np.testing.assert_array_equal(ex.labels, [1, 1, 0, 1, 0, 1])
    assert ex.index == [str(i) for i in range(6)]
    test = load("cola", "test")  # the test file has a header with an index column
    assert test.index == ["0", "1", "2"] and test.labels is None


def test_quote_characters_are_plain_text():
    assert load("cola").text_a[3] == '"Everybody," said the teacher, "sit down."'
    assert load("cola").text_a[5] == "He said that \"it's raining."  # an unbalanced quote
    assert load("sst2").text_a[3] == '" the emperor \'s new clothes " is a fun ride '
    qqp = load("qqp", "test")
    assert qqp.text_a[2] == 'What is "the" best way to learn "coding?'
    assert qqp.index == ["0", "1", "2"]  # QQP's test index column is `id`


def test_mrpc_header_with_byte_order_mark():
    ex = load("mrpc")
    assert ex.text_a[0].startswith("Amrozi accused his brother")
    assert ex.text_b[0].startswith("Referring to him as only")
    np.testing.assert_array_equal(ex.labels, [1, 0, 1, 0])


def test_mnli_two_dev_sets_test_sets_and_diagnostic():
    mnli = TASKS["mnli"]
    assert list(mnli.dev) == ["m", "mm"]
    matched, mismatched = load("mnli", "dev_matched"), load("mnli", "dev_mismatched")
    assert [mnli.labels[i] for i in matched.labels] == ["neutral", "contradiction", "entailment"]
    assert [mnli.labels[i] for i in mismatched.labels] == ["contradiction", "contradiction", "entailment", "entailment"]
    assert mismatched.text_a[2] == '"We\'ve got to have a plan," he said.'
    assert len(load("mnli", "test_matched")) == 3 and len(load("mnli", "test_mismatched")) == 2
    ax = load("mnli", "diagnostic")
    assert ax.labels is None and ax.text_b[3] == "She apologised."


def test_stsb_float_scores_and_unlabelled_test():
    np.testing.assert_allclose(load("stsb").labels, [5.0, 3.8, 3.8, 0.0])
    assert load("stsb", "test").labels is None


def test_hf_loader_maps_columns_and_labels(monkeypatch):
    import datasets

    tables = {
        ("mnli", "validation_mismatched"): {
            "premise": ["p0", "p1"],
            "hypothesis": ["h0", "h1"],
            "label": [2, 0],
            "idx": [0, 1],
        },
        ("stsb", "train"): {"sentence1": ["a"], "sentence2": ["b"], "label": [3.25], "idx": [7]},
        ("cola", "test"): {"sentence": ["x", "y"], "label": [-1, -1], "idx": [0, 1]},
    }
    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(tables[name, split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    mm = data.load_split(TASKS["mnli"], TASKS["mnli"].dev["mm"], "", "nyu-mll/glue")
    assert (mm.text_a, mm.text_b, mm.labels.tolist()) == (["p0", "p1"], ["h0", "h1"], [2, 0])
    sts = data.load_split(TASKS["stsb"], TASKS["stsb"].train, "", "nyu-mll/glue")
    assert sts.labels.dtype == np.float32 and sts.index == ["7"]
    cola = data.load_split(TASKS["cola"], TASKS["cola"].test["CoLA.tsv"], "", "nyu-mll/glue")
    assert cola.labels is None and cola.text_b is None
    assert calls[0] == ("nyu-mll/glue", "mnli", "validation_mismatched")


# ---- featurisation ----------------------------------------------------------------------------


def test_pair_truncation_pops_from_the_longer_side():
    assert data.truncate_pair([1, 2, 3, 4, 5], [6, 7], 5) == ([1, 2, 3], [6, 7])
    assert data.truncate_pair([1, 2], [3, 4, 5, 6, 7, 8], 5) == ([1, 2], [3, 4, 5])
    assert data.truncate_pair([1, 2, 3], [4, 5, 6], 4) == ([1, 2], [4, 5])  # ties pop b first, then a
    assert data.truncate_pair([1], [2], 5) == ([1], [2])


def test_featurize_pairs_singles_segments_and_padding():
    task = TASKS["rte"]
    ex = data.Examples([words(1, 2, 3, 4, 5, 6), words(7)], [words(8, 9), words(10, 11)], np.array([0, 1]), ["0", "1"])
    f = data.featurize(ex, WordTokenizer(), 8, task)
    # 6 + 2 tokens > 8 - 3: pop from a until 3 + 2 fit.
    np.testing.assert_array_equal(f["input_ids"][0], [101, 1, 2, 3, 102, 8, 9, 102])
    np.testing.assert_array_equal(f["token_type_ids"][0], [0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(f["input_ids"][1], [101, 7, 102, 10, 11, 102, 0, 0])
    np.testing.assert_array_equal(f["token_type_ids"][1], [0, 0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(f["attention_mask"][1], [1, 1, 1, 1, 1, 1, 0, 0])
    single = data.featurize(
        data.Examples([words(*range(1, 10))], None, np.array([1]), ["0"]), WordTokenizer(), 6, TASKS["sst2"]
    )
    np.testing.assert_array_equal(single["input_ids"][0], [101, 1, 2, 3, 4, 102])  # truncated to 6 - 2
    np.testing.assert_array_equal(single["token_type_ids"][0], 0)
    assert {f[k].dtype for k in data.FEATURES} == {np.dtype(np.int32)}


def test_empty_second_text_is_a_single_sentence_as_upstream():
    ex = data.Examples([words(1, 2), "", words(5)], [" ", words(3), words(6)], np.array([0, 1, 0]), ["0", "1", "2"])
    f = data.featurize(ex, WordTokenizer(), 6, TASKS["rte"])
    np.testing.assert_array_equal(f["input_ids"][0], [101, 1, 2, 102, 0, 0])  # b has no tokens: no second [SEP]
    np.testing.assert_array_equal(f["token_type_ids"][0], 0)
    np.testing.assert_array_equal(f["input_ids"][1], [101, 102, 3, 102, 0, 0])  # an empty a is still a pair
    np.testing.assert_array_equal(f["token_type_ids"][1], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(f["input_ids"][2], [101, 5, 102, 6, 102, 0])


def test_doubling_swaps_pairs_and_stsb_labels_are_scaled():
    ex = load("stsb").doubled_unordered()
    assert len(ex) == 8
    assert ex.text_a[4:] == load("stsb").text_b and ex.text_b[4:] == load("stsb").text_a
    feats = data.featurize(
        data.Examples([words(1)] * 2, [words(2)] * 2, np.array([5.0, 1.9], np.float32), ["0", "1"]),
        WordTokenizer(),
        8,
        TASKS["stsb"],
    )
    np.testing.assert_allclose(feats["labels"], [1.0, 0.38], rtol=1e-6)
    assert TASKS["mrpc"].double_unordered and TASKS["stsb"].double_unordered
    assert not any(t.double_unordered for n, t in TASKS.items() if n not in ("mrpc", "stsb"))


# ---- bad input --------------------------------------------------------------------------------


@pytest.fixture
def glue_copy(tmp_path):
    return shutil.copytree(FIXTURES, tmp_path / "glue")


def append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


def test_wrong_column_count_names_file_and_line(glue_copy):
    path = glue_copy / "RTE" / "train.tsv"
    append(path, "4\tonly one sentence\tentailment")  # 1 of 5 rows: more than the 1% that are skipped
    with pytest.raises(
        ValueError,
        match=rf"{path}: 1 of 5 rows are malformed .*{path}:6: expected 4 tab-separated "
        "columns, found 3",
    ):
        load("rte", data_dir=glue_copy)
    with pytest.raises(ValueError, match=rf"^{path}:6: expected 4"):
        load("rte", data_dir=glue_copy, strict=True)
    path = glue_copy / "CoLA" / "train.tsv"
    append(path, "gj04\t1\tno sentence")
    with pytest.raises(ValueError, match=rf"{path}:7: expected 4"):
        load("cola", data_dir=glue_copy)


def test_a_few_malformed_rows_are_skipped_with_a_warning(glue_copy, caplog):
    """As the original QQP train.tsv: a question broken over two lines gives two short rows among many good ones."""
    path = glue_copy / "QQP" / "train.tsv"
    header, *rows = path.read_text().splitlines()
    good = [f"{i}\t{2 * i}\t{2 * i + 1}\tquestion {i}?\tanother {i}?\t{i % 2}" for i in range(100, 300)]
    broken = ["7\t14\t15\tWhat is the first line", "of a question?\tAnd the second?\t1"]
    path.write_text("\n".join([header, *rows, *good[:100], *broken, *good[100:]]) + "\n")
    with caplog.at_level("WARNING"):
        ex = load("qqp", data_dir=glue_copy)
    assert len(ex) == len(rows) + 200 and ex.text_a[-1] == "question 299?" and ex.labels[-1] == 1
    first_bad = 1 + len(rows) + 100 + 1
    skipped = f"{path}: skipped 2 malformed row(s) of {len(rows) + 202} (lines {first_bad}, {first_bad + 1})"
    assert skipped in caplog.text
    with pytest.raises(ValueError, match=rf"{path}:{first_bad}: expected 6 tab-separated columns, found 4"):
        load("qqp", data_dir=glue_copy, strict=True)


def test_empty_files_name_the_file(glue_copy):
    path = glue_copy / "SST-2" / "train.tsv"
    path.write_text("")
    with pytest.raises(ValueError, match=rf"{path} is empty"):
        load("sst2", data_dir=glue_copy)
    path.write_text("sentence\tlabel\n")
    with pytest.raises(ValueError, match=rf"{path} has a header but no rows"):
        load("sst2", data_dir=glue_copy)


def test_label_outside_the_label_set(glue_copy):
    append(glue_copy / "MNLI" / "dev_matched.tsv", "\t".join(["9"] + ["x"] * 14 + ["-"]))
    with pytest.raises(ValueError, match=r"dev_matched.tsv:5: mnli label '-' is not one of entailment, neutral"):
        load("mnli", "dev_matched", data_dir=glue_copy)
    append(glue_copy / "STS-B" / "train.tsv", "\t".join(["4"] + ["x"] * 8 + ["5.5"]))
    with pytest.raises(ValueError, match=r"stsb label '5.5' is not a score in \[0, 5\]"):
        load("stsb", data_dir=glue_copy)


def test_missing_file_and_header_column(glue_copy):
    os.remove(glue_copy / "QNLI" / "dev.tsv")
    with pytest.raises(FileNotFoundError, match=rf"{glue_copy / 'QNLI' / 'dev.tsv'}"):
        load("qnli", "dev", data_dir=glue_copy)
    (glue_copy / "SST-2" / "train.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(ValueError, match=r"header lacks column\(s\) \['sentence'\]"):
        load("sst2", data_dir=glue_copy)


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown GLUE task 'sts'; valid tasks: cola, sst2, .*, ax, all"):
        get_task("sts")
    assert task_names("all") == list(TASKS) and task_names("ax") == ["mnli"] and task_names("rte") == ["rte"]
    assert set(TASK_CHOICES) == set(TASKS) | set(TRANSFER_TASKS) | {"ax", "all", "transfer"}
    assert task_names("transfer") == ["replaced_word", "word_order", "fill_blank", "deleted_word", "inserted_word"]
    assert not set(TASKS) & set(TRANSFER_TASKS)  # `all` (GLUE) never runs the transfer suite
