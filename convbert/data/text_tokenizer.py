"""Text tokenizers for pretraining: BERT uncased WordPiece (spec 4.1) or a trained SentencePiece model.

Both expose one interface (`TextTokenizer`): `encode_batch` returns ids without special tokens (the example
builder adds [CLS]/[SEP], spec 5.1), and the five special ids are fixed. Specials are never produced from text
("[MASK]" in a line is split into ordinary pieces, as in Google's BERT tokenizer). `save(directory)` copies the
vocabulary/model and writes `text_tokenizer.json`, which `load_text_tokenizer` reads back.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
from collections.abc import Sequence

SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
CONFIG_FILE = "text_tokenizer.json"


def _require_file(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return path


class TextTokenizer(abc.ABC):
    """Common interface; subclasses set `kind`, `file`, `lowercase` and `_token_to_id`."""

    kind: str
    file: str
    lowercase: bool

    @abc.abstractmethod
    def encode_batch(self, lines: Sequence[str]) -> list[list[int]]:
        """Token ids of each line, no special tokens added."""

    def encode_offsets(self, lines: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, [(start, end) character span of each token]) per line (SQuAD featurisation); WordPiece only."""
        raise ValueError(f"{self.file}: {self.kind} tokenizers give no character offsets; SQuAD needs WordPiece")

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        ...

    @abc.abstractmethod
    def _token_to_id(self, token: str) -> int | None:
        ...

    def _special_id(self, name: str) -> int:
        i = self._token_to_id(SPECIAL_TOKENS[name])
        if i is None:
            raise ValueError(f"{self.file} has no {SPECIAL_TOKENS[name]} token")
        return i

    pad_id = property(lambda self: self._special_id("pad"))
    unk_id = property(lambda self: self._special_id("unk"))
    cls_id = property(lambda self: self._special_id("cls"))
    sep_id = property(lambda self: self._special_id("sep"))
    mask_id = property(lambda self: self._special_id("mask"))

    @property
    def special_ids(self) -> dict[str, int]:
        return {name: self._special_id(name) for name in SPECIAL_TOKENS}

    def config(self) -> dict:
        """JSON description (also the manifest's `tokenizer` entry); `file` is relative to the saved directory."""
        return {"kind": self.kind, "file": os.path.basename(self.file), "lowercase": self.lowercase,
                "vocab_size": self.vocab_size, "special_ids": self.special_ids}

    def save(self, directory: str) -> list[str]:
        """Copies the vocab/model file into `directory` and writes `text_tokenizer.json`; returns the paths."""
        os.makedirs(directory, exist_ok=True)
        target = os.path.join(directory, os.path.basename(self.file))
        if not os.path.exists(target) or not os.path.samefile(self.file, target):
            shutil.copyfile(self.file, target)
        config_path = os.path.join(directory, CONFIG_FILE)
        with open(config_path, "w") as f:
            json.dump(self.config(), f, indent=2)
        return [target, config_path]


class WordPieceTokenizer(TextTokenizer):
    """BERT WordPiece (BERT normaliser: clean text, CJK split, lowercase + strip accents when `lowercase`)."""

    kind = "wordpiece"

    def __init__(self, vocab_file: str, lowercase: bool = True):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
        self.file, self.lowercase = _require_file(vocab_file), lowercase
        self._tok = Tokenizer(models.WordPiece.from_file(vocab_file, unk_token=SPECIAL_TOKENS["unk"]))
        self._tok.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
        self._tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def encode_batch(self, lines):
        return [e.ids for e in self._tok.encode_batch(list(lines), add_special_tokens=False)]

    def encode_offsets(self, lines):
        return [(e.ids, e.offsets) for e in self._tok.encode_batch(list(lines), add_special_tokens=False)]

    @property
    def vocab_size(self):
        return self._tok.get_vocab_size()

    def _token_to_id(self, token):
        return self._tok.token_to_id(token)


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece model trained by `train_sentencepiece` (specials at ids 0-4)."""

    kind = "sentencepiece"

    def __init__(self, model_file: str):
        import sentencepiece as spm
        self.file = _require_file(model_file)
        self._sp = spm.SentencePieceProcessor(model_file=model_file)
        self.lowercase = self._sp.encode("The") == self._sp.encode("the")  # case-folding normaliser

    def encode_batch(self, lines):
        return self._sp.encode(list(lines), out_type=int)

    @property
    def vocab_size(self):
        return self._sp.get_piece_size()

    def _token_to_id(self, token):
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != SPECIAL_TOKENS["unk"] else i


def train_sentencepiece(text_files: Sequence[str], output_prefix: str, vocab_size: int = 8000,
                        model_type: str = "unigram", *, lowercase: bool = True,
                        max_sentences: int = 2_000_000, seed: int = 0) -> SentencePieceTokenizer:
    """Trains `{output_prefix}.model` with [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.

    [CLS]/[SEP]/[MASK] are control symbols, so encoding text never yields them. `lowercase` uses the
    case-folding NFKC normaliser. `vocab_size` is an upper bound (small corpora give fewer pieces).
    """
    import sentencepiece as spm
    for path in text_files:
        _require_file(path)
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        input=list(text_files), model_prefix=output_prefix, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, pad_piece=SPECIAL_TOKENS["pad"], unk_id=1, unk_piece=SPECIAL_TOKENS["unk"], bos_id=-1, eos_id=-1,
        control_symbols=[SPECIAL_TOKENS[k] for k in ("cls", "sep", "mask")],
        normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc", hard_vocab_limit=False,
        input_sentence_size=max_sentences, shuffle_input_sentence=True, minloglevel=2)
    return SentencePieceTokenizer(output_prefix + ".model")


def make_text_tokenizer(kind: str, file: str, lowercase: bool = True) -> TextTokenizer:
    """Builds a tokenizer of `kind` ('wordpiece' | 'sentencepiece') from its vocab/model file."""
    if kind == "wordpiece":
        return WordPieceTokenizer(file, lowercase=lowercase)
    if kind == "sentencepiece":
        return SentencePieceTokenizer(file)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'wordpiece' or 'sentencepiece'")


def load_text_tokenizer(directory_or_manifest: str) -> TextTokenizer:
    """Loads from a directory holding `text_tokenizer.json` or `manifest.json`, or from such a JSON file."""
    path = directory_or_manifest
    if os.path.isdir(path):
        candidates = [os.path.join(path, name) for name in (CONFIG_FILE, "manifest.json")]
        path = next((c for c in candidates if os.path.isfile(c)), candidates[0])
    with open(_require_file(path)) as f:
        config = json.load(f)
    config = config.get("tokenizer", config)
    return make_text_tokenizer(config["kind"], os.path.join(os.path.dirname(path), config["file"]),
                               config.get("lowercase", True))
