# GLUE fine-tuning (docs/recipes.md#glue-fine-tuning). `get_config("TASK,SIZE")`: TASK in cola sst2 mrpc stsb qqp
# mnli qnli rte wnli ax all, or the transfer suite (transfer, replaced_word, word_order, fill_blank, deleted_word,
# inserted_word), SIZE in tiny small medium_small base large (sets the recipe, the default checkpoint and the paper
# numbers shown).
#
#   python finetune_glue.py --config=configs/finetune_glue.py:sst2,tiny \
#       --config.init_checkpoint=workdirs/pretrain_tiny --config.data_dir=data/glue_sample \
#       --workdir=workdirs/glue_tiny --config.num_seeds=5
#     CPU demo on the bundled SST-2 sample after `python pretrain.py`: about 20 s a seed on 2 cores, dev accuracy
#     80.0% (median of 5 seeds; chance 50%; the no-pretraining control random:workdirs/pretrain_tiny: 83.8%).
#   python finetune_glue.py --config=configs/finetune_glue.py:transfer,tiny \
#       --config.init_checkpoint=workdirs/pretrain_tiny --config.data_dir=data/transfer --workdir=workdirs/transfer \
#       --config.num_seeds=5
#     The transfer suite (docs/transfer.md): medians of 5 seeds 51.8 / 61.0 / 49.2 (replaced_word, word_order,
#     fill_blank; chance 50%) against 47.7 / 48.6 / 47.5 for the control (README "Does pretraining help?").
#   python finetune_glue.py --config=configs/finetune_glue.py:all,base --config.num_seeds=5 --workdir=workdirs/glue_base
#     YituTech/conv-bert-base on all of GLUE from the hub (internet needed): expect a dev GLUE score around 87
#     (third-party dev numbers 87.7 with best-checkpoint selection, docs/recipes.md#third-party-dev-numbers; the
#     paper's test score is 84.9, 86.4 for the 4M-update model); test predictions for the GLUE server in
#     workdirs/glue_base/submission/.
#   small / medium_small: paper test scores 78.9 / 79.7 (paper Table 3, docs/recipes.md#glue-test); see README
#     "Reproducing the paper".
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
    c.eval_batch_size = c.batch_size  # the eval set is padded with ignored dummy rows to a multiple of it
    c.max_seq_length = 64 if tiny else 128

    # dropout + one dense (docs/recipes.md#glue-heads); 'hf' is used anyway for checkpoints with one
    c.classifier_head = "original"
    return c
