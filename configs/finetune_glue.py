# GLUE fine-tuning (docs/glue.md; the recipe: docs/recipes.md#glue-fine-tuning). `get_config("TASK,SIZE")`: TASK in
# cola sst2 mrpc stsb qqp mnli qnli rte wnli ax all, or the transfer suite (transfer, replaced_word, word_order,
# fill_blank, deleted_word, inserted_word), SIZE in tiny small medium_small base large (sets the recipe, the default
# checkpoint and the paper numbers shown).
#
#   python finetune_glue.py --config=configs/finetune_glue.py:transfer,tiny \
#       --config.init_checkpoint=workdirs/pretrain_tiny --config.data_dir=data/transfer --workdir=workdirs/transfer
#     The transfer suite after `python pretrain.py` (docs/transfer.md); results in the workdir's results.md.
#   python finetune_glue.py --config=configs/finetune_glue.py:all,base --config.num_seeds=5 --workdir=workdirs/glue_base
#     YituTech/conv-bert-base on all of GLUE from the hub; expect the paper's numbers
#     (docs/recipes.md#reported-results).

import ml_collections

from convbert.finetuning import default_config
from convbert.glue.tasks import TASK_CHOICES, TASKS, TRANSFER_TASKS


def get_config(arg: str = "sst2,tiny") -> ml_collections.ConfigDict:
    task, _, size = (arg or "sst2,tiny").partition(",")
    if task not in TASK_CHOICES:
        raise ValueError(f"configs/finetune_glue.py: unknown task {task!r}; valid tasks: {', '.join(TASK_CHOICES)}")
    c = default_config(size, "configs/finetune_glue.py")  # recipe per size, shared with configs/finetune_squad.py
    tiny = size == "tiny"
    c.task = task
    c.data_dir = ""  # original GLUE layout (CoLA/, SST-2/, ..., diagnostic/); empty: `hf_dataset` from the hub
    c.hf_dataset = "nyu-mll/glue"
    # False: skip malformed TSV rows with a warning (an error above 1% of a file; convbert.glue.data); True: any
    # malformed row is an error
    c.strict_tsv = False

    # The transfer suite (2,400 training sentences per task) keeps ELECTRA's 3 epochs of batch 32 at every size.
    transfer = task == "transfer" or task in TRANSFER_TASKS
    # <= 0: per task (3; RTE and STS-B 10)
    c.num_train_epochs = 3 if transfer else 10 if tiny else (TASKS[task].epochs if task in TASKS else -1)
    c.batch_size = 8 if tiny and not transfer else 32  # global, over all devices and processes
    c.eval_batch_size = c.batch_size  # the last eval batch is filled with copies of its last row (dropped)
    c.max_seq_length = 64 if tiny else 128
    # Training batches of rows of similar length, each cut to its longest row (convbert.finetuning.epoch_batches;
    # transformers' `group_by_length`): the CPU recipe's speed-up; the paper sizes keep ELECTRA's random batches.
    # Evaluation batches are always grouped and cut, which leaves every logit as it is.
    c.group_by_length = tiny

    # dropout + one dense (docs/recipes.md#glue-heads); 'hf' is used anyway for checkpoints with one
    c.classifier_head = "original"
    return c
