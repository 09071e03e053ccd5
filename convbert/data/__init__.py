"""Pretraining data: the ELECTRA example builder (docs/electra.md#example-builder), shard preparation and the grain
loader (the tokenizers are in `convbert.tokenization`)."""

from convbert.data.example_builder import ExampleBuilder
from convbert.data.loader import PretrainingData, load_manifest, make_iterator
from convbert.data.prepare import prepare_corpus
from convbert.data.sources import DEMO_CORPUS_DIR

__all__ = [
    "DEMO_CORPUS_DIR",
    "ExampleBuilder",
    "PretrainingData",
    "load_manifest",
    "make_iterator",
    "prepare_corpus",
]
