# SQuAD fine-tuning (docs/squad.md; ELECTRA's recipe, as the official ConvBERT code: docs/recipes.md#squad-fine-tuning).
# `get_config("VERSION,SIZE")`: VERSION v1 (SQuAD v1.1) or v2 (v2.0), SIZE in tiny small medium_small base large
# (sets the recipe, the default checkpoint and the paper numbers shown).
#
#   python finetune_squad.py --config=configs/finetune_squad.py:v1,tiny \
#       --config.init_checkpoint=workdirs/pretrain_tiny --workdir=workdirs/squad_tiny
#     CPU demo on the committed fixture tests/fixtures/squad after `python pretrain.py` (docs/squad.md#the-tiny-demo).
#   python finetune_squad.py --config=configs/finetune_squad.py:v1,base --workdir=workdirs/squad_v1_base
#     YituTech/conv-bert-base on SQuAD from the hub; expect the paper's numbers (docs/recipes.md#squad-dev).

import ml_collections

from convbert.finetuning import default_config
from convbert.squad.finetune import VERSIONS


def get_config(arg: str = "v1,tiny") -> ml_collections.ConfigDict:
    version, _, size = (arg or "v1,tiny").partition(",")
    if version not in VERSIONS:
        raise ValueError(f"configs/finetune_squad.py: unknown version {version!r}; choose from {', '.join(VERSIONS)}")
    c = default_config(size, "configs/finetune_squad.py")  # recipe per size, shared with configs/finetune_glue.py
    tiny = size == "tiny"
    c.version = version
    # train-v1.1.json + dev-v1.1.json or train-v2.0.json + dev-v2.0.json; empty: rajpurkar/squad(_v2) from the hub
    c.data_dir = "tests/fixtures/squad" if tiny else ""

    c.num_train_epochs = 10 if tiny else 2
    c.batch_size = 16 if tiny else 32  # global, over all devices and processes
    if tiny:
        c.learning_rate = 1e-3
    c.eval_batch_size = c.batch_size  # the last dev batch is filled with copies of its last window (dropped)
    c.max_seq_length = 128 if tiny else 512
    c.doc_stride = 32 if tiny else 128  # windows over a long context start this many tokens apart
    c.max_query_length = 24 if tiny else 64  # question tokens kept
    c.n_best_size = 20  # start and end candidates per window
    c.max_answer_length = 30  # tokens
    c.answerable_weight = 0.5  # v2: weight of the answerability loss
    c.null_threshold = -2.75  # v2: answer '' when the no-answer odds exceed it (ELECTRA's qa_na_threshold)
    return c
