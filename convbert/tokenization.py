"""`ConvBertTokenizer`: BERT WordPiece on the `tokenizers` library, giving the ids, token types and masks of
transformers' `ConvBertTokenizer` (lower-casing, accent stripping, CJK splitting, [CLS] A [SEP] B [SEP])."""

from __future__ import annotations

import json
import os

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from convbert.assets import BERT_UNCASED_VOCAB

VOCAB_NAME = "vocab.txt"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
PADDING = {False: None, "do_not_pad": None, True: "longest", "longest": "longest", "max_length": "max_length"}
TRUNCATION = {None: None, False: None, "do_not_truncate": None, True: "longest_first",
              "longest_first": "longest_first", "only_first": "only_first", "only_second": "only_second"}
SPECIAL_NAMES = ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


def load_vocab(vocab_file: str) -> list[str]:
    """The tokens of a vocab file in id order (line i is id i; CRLF endings are fine)."""
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"vocab file not found: {vocab_file}")
    with open(vocab_file, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


class ConvBertTokenizer:
    """WordPiece tokenizer with transformers' `ConvBertTokenizer` behaviour and call signature.

    vocab_file: one token per line (default: the bundled BERT uncased vocab, [PAD] 0, [UNK] 100, [CLS] 101,
    [SEP] 102, [MASK] 103). Calling it returns a dict of `input_ids`, `token_type_ids`, `attention_mask`.
    """

    def __init__(self, vocab_file: str = BERT_UNCASED_VOCAB, do_lower_case: bool = True, unk_token: str = "[UNK]",
                 sep_token: str = "[SEP]", pad_token: str = "[PAD]", cls_token: str = "[CLS]",
                 mask_token: str = "[MASK]", tokenize_chinese_chars: bool = True, strip_accents: bool | None = None,
                 model_max_length: int = 512):
        self.tokens = load_vocab(vocab_file)
        vocab = {token: i for i, token in enumerate(self.tokens)}  # a repeated line keeps its last id, as transformers
        self.do_lower_case, self.tokenize_chinese_chars, self.strip_accents = (
            do_lower_case, tokenize_chinese_chars, strip_accents)
        self.unk_token, self.sep_token, self.pad_token, self.cls_token, self.mask_token = (
            unk_token, sep_token, pad_token, cls_token, mask_token)
        self.model_max_length = model_max_length
        missing = [t for t in self.all_special_tokens if t not in vocab]
        if missing:
            raise ValueError(f"{vocab_file}: special tokens {missing} are not in the vocab")
        tok = Tokenizer(WordPiece(vocab, unk_token=unk_token))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                                    strip_accents=strip_accents, lowercase=do_lower_case)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix="##")
        tok.post_processor = processors.TemplateProcessing(
            single=f"{cls_token}:0 $A:0 {sep_token}:0", pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
            special_tokens=[(cls_token, vocab[cls_token]), (sep_token, vocab[sep_token])])
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self.all_special_tokens])
        self._tokenizer = tok

    @classmethod
    def from_pretrained(cls, path: str, **kwargs) -> "ConvBertTokenizer":
        """From a directory with `vocab.txt` (and optionally `tokenizer_config.json`) or a hub id; keyword
        arguments override the saved settings."""
        from convbert.hf_io import resolve_pretrained
        directory = resolve_pretrained(path, [VOCAB_NAME, TOKENIZER_CONFIG_NAME])
        settings = {}
        config_file = os.path.join(directory, TOKENIZER_CONFIG_NAME)
        if os.path.isfile(config_file):
            with open(config_file) as f:
                saved = json.load(f)
            names = ("do_lower_case", "tokenize_chinese_chars", "strip_accents", "model_max_length") + SPECIAL_NAMES
            settings = {k: saved[k] for k in names if k in saved}
        return cls(os.path.join(directory, VOCAB_NAME), **{**settings, **kwargs})

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

    unk_token_id = property(lambda self: self.convert_tokens_to_ids(self.unk_token))
    sep_token_id = property(lambda self: self.convert_tokens_to_ids(self.sep_token))
    pad_token_id = property(lambda self: self.convert_tokens_to_ids(self.pad_token))
    cls_token_id = property(lambda self: self.convert_tokens_to_ids(self.cls_token))
    mask_token_id = property(lambda self: self.convert_tokens_to_ids(self.mask_token))

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Unknown tokens map to the [UNK] id."""
        if isinstance(tokens, str):
            token_id = self._tokenizer.token_to_id(tokens)
            return self._tokenizer.token_to_id(self.unk_token) if token_id is None else token_id
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

    def encode_offsets(self, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """(ids, [(start, end) character span of each token in its text]) per text, no special tokens."""
        return [(e.ids, e.offsets) for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """ids (list or 1-D array) -> text; WordPiece '##' pieces are joined."""
        return self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def __call__(self, text: str | list[str], text_pair: str | list[str] | None = None, *,
                 add_special_tokens: bool = True, padding: bool | str = False, truncation: bool | str | None = None,
                 max_length: int | None = None, pad_to_multiple_of: int | None = None,
                 return_tensors: str | None = None) -> dict:
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
            texts = list(zip(texts, pairs))
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
            tok.enable_padding(length=max_length if pad == "max_length" else None, pad_id=self.pad_token_id,
                               pad_token=self.pad_token, pad_to_multiple_of=pad_to_multiple_of)
        try:
            encodings = tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        finally:
            tok.no_truncation()
            tok.no_padding()
        out = {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings],
               "attention_mask": [e.attention_mask for e in encodings]}
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

    def get_special_tokens_mask(self, ids_0: list[int], ids_1: list[int] | None = None,
                                already_has_special_tokens: bool = False) -> list[int]:
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
        settings.update(tokenizer_class="ConvBertTokenizer", do_lower_case=self.do_lower_case,
                        tokenize_chinese_chars=self.tokenize_chinese_chars, strip_accents=self.strip_accents,
                        model_max_length=self.model_max_length)
        config_path = os.path.join(save_directory, TOKENIZER_CONFIG_NAME)
        with open(config_path, "w") as f:
            json.dump(settings, f, indent=2, sort_keys=True)
        return vocab_path, config_path
