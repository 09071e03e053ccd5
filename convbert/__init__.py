"""convbert-jax: ConvBERT (arXiv 2008.02496) in JAX / Flax NNX."""

from convbert.config import ConvBertConfig, generator_config, size_config
from convbert.heads import (
    ConvBertForMaskedLM,
    ConvBertForMultipleChoice,
    ConvBertForPreTraining,
    ConvBertForQuestionAnswering,
    ConvBertForSequenceClassification,
    ConvBertForTokenClassification,
)
from convbert.modeling import ConvBertModel
from convbert.tokenization import ConvBertTokenizer

__all__ = [
    "ConvBertConfig",
    "ConvBertForMaskedLM",
    "ConvBertForMultipleChoice",
    "ConvBertForPreTraining",
    "ConvBertForQuestionAnswering",
    "ConvBertForSequenceClassification",
    "ConvBertForTokenClassification",
    "ConvBertModel",
    "ConvBertTokenizer",
    "generator_config",
    "size_config",
]
