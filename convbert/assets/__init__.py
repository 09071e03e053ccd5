"""Files shipped with the package."""

import os

ASSETS_DIR = os.path.dirname(os.path.abspath(__file__))
BERT_UNCASED_VOCAB = os.path.join(ASSETS_DIR, "bert-base-uncased-vocab.txt")
