"""Tokenizers: one interface (`TextTokenizer`) for pretraining data preparation and fine-tuning, two kinds.

* `ConvBertTokenizer`: BERT WordPiece on the `tokenizers` library, with the ids, token types and masks of
  transformers' `ConvBertTokenizer` (lower-casing, accent stripping, CJK splitting, [CLS] A [SEP] B [SEP]) and
  its API (`from_pretrained`, `__call__`, `save_pretrained`, ...).
* `SentencePieceTokenizer`: a model trained on the pretraining corpus by `train_sentencepiece`.

The interface: `encode_batch(texts)` gives the ids of each text without special tokens (the example builder and
the GLUE / SQuAD featurisers add [CLS] / [SEP]); `encode_offsets(texts)` adds the character span of each token
(SQuAD); the five special ids (`cls_token_id`, ..., `special_ids`); `save(directory)` writes the
vocabulary or model with `text_tokenizer.json` (WordPiece: transformers' `vocab.txt` + `tokenizer_config.json`).
In `encode_batch` / `encode_offsets` special-token strings are ordinary text ("[MASK]" -> "[", "mask", "]"), as
in the BERT `FullTokenizer` google-research/electra pretrains and fine-tunes with (`model/tokenization.py`);
the transformers-style `__call__` and `tokenize` match them as transformers does.

`load_tokenizer(path)` reads any of them back: our tokenizer folder (a pretraining workdir's `tokenizer/`, an
export, prepared data), a transformers folder with `vocab.txt`, a vocab file or a hub id.
"""

from __future__ import annotations

import abc
import json
import os
import shutil
from collections.abc import Sequence

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from convbert import faults
from convbert.assets import BERT_UNCASED_VOCAB

CONFIG_FILE = "text_tokenizer.json"  # our description of a saved tokenizer (kind, file, lowercase, special ids)
VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
# SentencePiece training that fails with less free space than this where it writes is reported as out of space
SP_MIN_FREE_BYTES = 16 << 20
KINDS = ("wordpiece", "sentencepiece")  # `TextTokenizer.kind` of ConvBertTokenizer, SentencePieceTokenizer
SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
PADDING = {False: None, "do_not_pad": None, True: "longest", "longest": "longest", "max_length": "max_length"}
TRUNCATION = {
    None: None,
    False: None,
    "do_not_truncate": None,
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}
SPECIAL_NAMES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
SAVED_SETTINGS = ("do_lower_case", "tokenize_chinese_chars", "strip_accents", "model_max_length") + SPECIAL_NAMES


def _require_file(path: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    return path


def load_vocab(vocab_file: str) -> list[str]:
    """The tokens of a vocab file in id order (line i is id i; CRLF endings are fine)."""
    with open(_require_file(vocab_file), encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


class TextTokenizer(abc.ABC):
    """The interface every tokenizer implements; subclasses set `kind`, `file` (the vocab or model file),
    `file_name` (its name when saved) and `lowercase`."""

    kind: str
    file: str
    file_name: str
    lowercase: bool

    @abc.abstractmethod
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens added."""

    @abc.abstractmethod
    def encode_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, [(start, end) character span of each token in its text]) per text, no special tokens."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int: ...

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """The id of `token`, None when it is not in the vocabulary."""

    @abc.abstractmethod
    def _save_files(self, directory: str) -> list[str]:
        """Writes the vocab / model files (the first one named `file_name`) into `directory`; returns the paths."""

    def _special_id(self, name: str) -> int:
        token = getattr(self, f"{name}_token", SPECIAL_TOKENS[name])  # ConvBertTokenizer's may be renamed
        i = self.token_to_id(token)
        if i is None:
            raise ValueError(f"{self.file} has no {token} token")
        return i

    pad_token_id = property(lambda self: self._special_id("pad"))
    unk_token_id = property(lambda self: self._special_id("unk"))
    cls_token_id = property(lambda self: self._special_id("cls"))
    sep_token_id = property(lambda self: self._special_id("sep"))
    mask_token_id = property(lambda self: self._special_id("mask"))

    @property
    def special_ids(self) -> dict[str, int]:
        """{'pad', 'unk', 'cls', 'sep', 'mask'} -> id."""
        return {name: self._special_id(name) for name in SPECIAL_TOKENS}

    def config(self) -> dict:
        """The content of `text_tokenizer.json` (also the prepared data's manifest entry `tokenizer`); `file` is
        relative to the saved directory."""
        return {
            "kind": self.kind,
            "file": self.file_name,
            "lowercase": self.lowercase,
            "vocab_size": self.vocab_size,
            "special_ids": self.special_ids,
        }

    def save(self, directory: str) -> list[str]:
        """Writes the vocab / model files and `text_tokenizer.json` into `directory`; returns the paths."""
        os.makedirs(directory, exist_ok=True)
        files = self._save_files(directory)
        config_path = os.path.join(directory, CONFIG_FILE)
        with open(config_path, "w") as f:
            json.dump(self.config(), f, indent=2)
        return [*files, config_path]


class ConvBertTokenizer(TextTokenizer):
    """WordPiece tokenizer with transformers' `ConvBertTokenizer` behaviour and call signature.

    vocab_file: one token per line (default: the bundled BERT uncased vocab, [PAD] 0, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103). Calling it returns a dict of `input_ids`, `token_type_ids`, `attention_mask`.
    """

    kind = "wordpiece"
    file_name = VOCAB_NAME

    def __init__(
        self,
        vocab_file: str = BERT_UNCASED_VOCAB,
        do_lower_case: bool = True,
        unk_token: str = "[UNK]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        cls_token: str = "[CLS]",
        mask_token: str = "[MASK]",
        tokenize_chinese_chars: bool = True,
        strip_accents: bool | None = None,
        model_max_length: int = 512,
    ):
        self.file = vocab_file
        self.tokens = load_vocab(vocab_file)
        vocab = {token: i for i, token in enumerate(self.tokens)}  # a repeated line keeps its last id, as transformers
        self.do_lower_case, self.tokenize_chinese_chars, self.strip_accents = (
            do_lower_case,
            tokenize_chinese_chars,
            strip_accents,
        )
        self.unk_token, self.sep_token, self.pad_token, self.cls_token, self.mask_token = (
            unk_token,
            sep_token,
            pad_token,
            cls_token,
            mask_token,
        )
        self.model_max_length = model_max_length
        missing = [t for t in self.all_special_tokens if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file}: special tokens {missing} are not in the vocab")
        tok = Tokenizer(WordPiece(vocab, unk_token=unk_token))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=do_lower_case,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep_token}:0",
            pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, vocab[cls_token]), (sep_token, vocab[sep_token])],
        )
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.all_special_tokens])
        self._tokenizer = tok

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> ConvBertTokenizer:
        """From a directory with `vocab.txt` (and optionally `tokenizer_config.json`) or a hub id; keyword
        arguments override the saved settings."""
        from convbert.hf_io import resolve_pretrained

        directory = resolve_pretrained(path, [VOCAB_NAME, TOKENIZER_CONFIG_NAME])
        return cls(os.path.join(directory, VOCAB_NAME), **{**_saved_settings(directory), **kwargs})

    @property
    def lowercase(self) -> bool:
        return self.do_lower_case

    # ---- the pretraining / fine-tuning interface ----
    def _encode_plain(self, texts: Sequence[str]):
        """Encodings without special tokens, special-token strings read as ordinary text."""
        self._tokenizer.encode_special_tokens = True
        try:
            return self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        finally:
            self._tokenizer.encode_special_tokens = False

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._encode_plain(texts)]

    def encode_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        return [(e.ids, e.offsets) for e in self._encode_plain(texts)]

    def token_to_id(self, token: str) -> int | None:
        return self._tokenizer.token_to_id(token)

    def _save_files(self, directory: str) -> list[str]:
        return list(self.save_pretrained(directory))

    # ---- vocabulary ----
    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._tokenizer.get_vocab(with_added_tokens=True)

    @property
    def all_special_tokens(self) -> list[str]:
        return [getattr(self, name) for name in SPECIAL_NAMES]

    @property
    def all_special_ids(self) -> list[int]:
        return self.convert_tokens_to_ids(self.all_special_tokens)

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Unknown tokens map to the [UNK] id."""
        if isinstance(tokens, str):
            token_id = self.token_to_id(tokens)
            return self.token_to_id(self.unk_token) if token_id is None else token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | list[int], skip_special_tokens: bool = False) -> str | list[str]:
        if isinstance(ids, (int, np.integer)):
            return self._tokenizer.id_to_token(int(ids))
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._tokenizer.id_to_token(int(i)) for i in ids if int(i) not in special]

    # ---- text <-> ids ----
    def tokenize(self, text: str) -> list[str]:
        """WordPiece tokens without [CLS]/[SEP]."""
        return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """ids (list or 1-D array) -> text; WordPiece '##' pieces are joined."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __call__(
        self,
        text: str | list[str],
        text_pair: str | list[str] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = None,
    ) -> dict:
        """Encodes a text, a pair, or lists of them, with transformers' padding/truncation rules.

        Returns {'input_ids', 'token_type_ids', 'attention_mask'}: lists of ints (lists of lists for batches),
        or [B, T] arrays for return_tensors 'np' / 'jax' (a single text gets B = 1).
        """
        if padding not in PADDING or truncation not in TRUNCATION:
            raise ValueError(f"padding must be one of {list(PADDING)}, truncation one of {list(TRUNCATION)}")
        batched = not isinstance(text, str)
        texts = list(text) if batched else [text]
        if text_pair is not None:
            pairs = list(text_pair) if batched else [text_pair]
            if len(pairs) != len(texts):
                raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
            texts = list(zip(texts, pairs, strict=True))
        pad, trunc = PADDING[padding], TRUNCATION[truncation]
        if max_length is not None and pad is None and truncation is None:
            trunc = "longest_first"  # as transformers: a max_length alone truncates
        if max_length is None and (pad == "max_length" or trunc):
            max_length = self.model_max_length
        tok = self._tokenizer
        tok.no_truncation()
        tok.no_padding()
        if trunc:
            tok.enable_truncation(max_length, strategy=trunc)
        if pad:
            tok.enable_padding(
                length=max_length if pad == "max_length" else None,
                pad_id=self.pad_token_id,
                pad_token=self.pad_token,
                pad_to_multiple_of=pad_to_multiple_of,
            )
        try:
            encodings = tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        finally:
            tok.no_truncation()
            tok.no_padding()
        out = {
            "input_ids": [e.ids for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
        }
        if return_tensors is not None:
            return {k: self._as_tensor(v, return_tensors) for k, v in out.items()}
        return out if batched else {k: v[0] for k, v in out.items()}

    @staticmethod
    def _as_tensor(rows: list[list[int]], kind: str):
        if len({len(r) for r in rows}) > 1:
            raise ValueError("sequences have different lengths; pass padding=True to return tensors")
        if kind == "np":
            return np.asarray(rows, np.int64)
        if kind == "jax":
            import jax.numpy as jnp

            return jnp.asarray(rows, jnp.int32)
        raise ValueError(f"return_tensors must be None, 'np' or 'jax', got {kind!r}")

    # ---- special-token helpers (BERT layout: [CLS] A [SEP] (B [SEP])) ----
    def build_inputs_with_special_tokens(self, ids_0: list[int], ids_1: list[int] | None = None) -> list[int]:
        cls, sep = [self.cls_token_id], [self.sep_token_id]
        return cls + ids_0 + sep + ([] if ids_1 is None else ids_1 + sep)

    def get_special_tokens_mask(
        self, ids_0: list[int], ids_1: list[int] | None = None, already_has_special_tokens: bool = False
    ) -> list[int]:
        """1 at special tokens, 0 at sequence tokens, of the sequence the ids are (or would be) in."""
        if already_has_special_tokens:
            if ids_1 is not None:
                raise ValueError("pass one already formatted sequence, not a pair")
            special = set(self.all_special_ids)
            return [int(i in special) for i in ids_0]
        return [1] + [0] * len(ids_0) + [1] + ([] if ids_1 is None else [0] * len(ids_1) + [1])

    def create_token_type_ids_from_sequences(self, ids_0: list[int], ids_1: list[int] | None = None) -> list[int]:
        return [0] * (len(ids_0) + 2) + ([] if ids_1 is None else [1] * (len(ids_1) + 1))

    # ---- saving ----
    def save_vocabulary(self, save_directory: str, filename_prefix: str | None = None) -> tuple[str]:
        """Writes the vocab (line i = token i) as `[prefix-]vocab.txt`; returns (path,)."""
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, (f"{filename_prefix}-" if filename_prefix else "") + VOCAB_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.writelines(token + "\n" for token in self.tokens)
        return (path,)

    def save_pretrained(self, save_directory: str) -> tuple[str, str]:
        """`vocab.txt` + `tokenizer_config.json`, loadable here and by transformers' AutoTokenizer."""
        (vocab_path,) = self.save_vocabulary(save_directory)
        settings = {name: getattr(self, name) for name in SPECIAL_NAMES}
        settings.update(
            tokenizer_class="ConvBertTokenizer",
            do_lower_case=self.do_lower_case,
            tokenize_chinese_chars=self.tokenize_chinese_chars,
            strip_accents=self.strip_accents,
            model_max_length=self.model_max_length,
        )
        config_path = os.path.join(save_directory, TOKENIZER_CONFIG_NAME)
        with open(config_path, "w") as f:
            json.dump(settings, f, indent=2, sort_keys=True)
        return vocab_path, config_path


def _saved_settings(directory: str) -> dict:
    """The `ConvBertTokenizer` arguments in `directory/tokenizer_config.json` ({} without one)."""
    path = os.path.join(directory, TOKENIZER_CONFIG_NAME)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        saved = json.load(f)
    return {k: saved[k] for k in SAVED_SETTINGS if k in saved}


def _char_offsets(text: str) -> list[int]:
    """[the character offset of each UTF-8 byte offset of `text`], len(text.encode()) + 1 entries."""
    out = []
    for i, ch in enumerate(text):
        out += [i] * len(ch.encode())
    return out + [len(text)]


class SentencePieceTokenizer(TextTokenizer):
    """A SentencePiece model trained by `train_sentencepiece` (specials at ids 0-4)."""

    kind = "sentencepiece"

    def __init__(self, model_file: str):
        import sentencepiece as spm

        self.file = _require_file(model_file)
        self.file_name = os.path.basename(model_file)
        self._sp = spm.SentencePieceProcessor(model_file=model_file)
        self.lowercase = self._sp.encode("The") == self._sp.encode("the")  # case-folding normaliser

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int)

    def encode_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """The pieces' spans in the input (their proto's begin / end, UTF-8 byte offsets of the original text) as
        character offsets, without the whitespace a piece's '▁' stands for."""
        from sentencepiece import sentencepiece_pb2

        out = []
        for text, proto in zip(texts, self._sp.encode(list(texts), out_type="serialized_proto"), strict=True):
            pieces = sentencepiece_pb2.SentencePieceText.FromString(proto).pieces
            char_at = _char_offsets(text)
            spans = []
            for p in pieces:
                begin, end = char_at[p.begin], char_at[p.end]
                while begin < end and text[begin].isspace():
                    begin += 1
                spans.append((begin, end))
            out.append(([p.id for p in pieces], spans))
        return out

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        i = self._sp.piece_to_id(token)
        return None if i == self._sp.unk_id() and token != SPECIAL_TOKENS["unk"] else i

    def _save_files(self, directory: str) -> list[str]:
        target = os.path.join(directory, self.file_name)
        if not os.path.exists(target) or not os.path.samefile(self.file, target):
            shutil.copyfile(self.file, target)
        return [target]


def train_sentencepiece(
    text_files: Sequence[str],
    output_prefix: str,
    vocab_size: int = 8000,
    model_type: str = "unigram",
    *,
    lowercase: bool = True,
    max_sentences: int = 2_000_000,
    seed: int = 0,
) -> SentencePieceTokenizer:
    """Trains `{output_prefix}.model` with [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4.

    [CLS]/[SEP]/[MASK] are control symbols, so encoding text never yields them. `lowercase` uses the
    case-folding NFKC normaliser. `vocab_size` is an upper bound (small corpora give fewer pieces).
    """
    import sentencepiece as spm

    for path in text_files:
        _require_file(path)
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            input=list(text_files),
            model_prefix=output_prefix,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=0,
            pad_piece=SPECIAL_TOKENS["pad"],
            unk_id=1,
            unk_piece=SPECIAL_TOKENS["unk"],
            bos_id=-1,
            eos_id=-1,
            control_symbols=[SPECIAL_TOKENS[k] for k in ("cls", "sep", "mask")],
            normalization_rule_name="nmt_nfkc_cf" if lowercase else "nmt_nfkc",
            hard_vocab_limit=False,
            input_sentence_size=max_sentences,
            shuffle_input_sentence=True,
            minloglevel=2,
        )
    except RuntimeError as e:  # its errors name a source line, not the cause: a failed write on a full disk
        free = faults.free_bytes(output_prefix)
        if free is not None and free < SP_MIN_FREE_BYTES:
            raise faults.out_of_space(output_prefix + ".model", "training SentencePiece into") from e
        raise
    return SentencePieceTokenizer(output_prefix + ".model")


def load_tokenizer(path: str) -> TextTokenizer:
    """The tokenizer at `path`: a folder with `text_tokenizer.json` (a pretraining workdir's `tokenizer/`, an export,
    prepared data; also those written before WordPiece folders held `vocab.txt`) or that file (or a prepared
    `manifest.json`), a transformers folder with `vocab.txt` (+ `tokenizer_config.json`), a vocab file, or a hub id."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, CONFIG_FILE)):
            if not os.path.isfile(os.path.join(path, VOCAB_NAME)):
                raise FileNotFoundError(f"no tokenizer in {path}: it holds neither {CONFIG_FILE} nor {VOCAB_NAME}")
            return ConvBertTokenizer.from_pretrained(path)
        path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(path):
        return ConvBertTokenizer.from_pretrained(path)  # a hub id
    if not path.endswith(".json"):
        return ConvBertTokenizer(path)
    with open(path) as f:
        config = json.load(f)
    config = config.get("tokenizer", config)  # a manifest holds it under `tokenizer`
    directory = os.path.dirname(path)
    file = os.path.join(directory, config["file"])
    if config["kind"] == "sentencepiece":
        return SentencePieceTokenizer(file)
    if config["kind"] == "wordpiece":
        return ConvBertTokenizer(file, **{**_saved_settings(directory), "do_lower_case": config.get("lowercase", True)})
    raise ValueError(f"{path}: unknown tokenizer kind {config['kind']!r}; expected one of {KINDS}")
