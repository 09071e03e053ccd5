"""ConvBERT fine-tuning on SQuAD v1.1 / v2.0. The logic lives in `convbert.squad.finetune`; see docs/squad.md.

  python finetune_squad.py --config=configs/finetune_squad.py:v1,tiny --config.init_checkpoint=workdirs/pretrain_tiny \
      --workdir=workdirs/squad_tiny
  python finetune_squad.py --config=configs/finetune_squad.py:v2,base --workdir=workdirs/squad_v2_base
"""

from absl import app, flags

from convbert import config_file, distributed, faults, workdir_lock
from convbert.squad import finetune

config_file.define("configs/finetune_squad.py:v1,tiny", "Fine-tuning config (file:version,size).")
flags.DEFINE_string("workdir", None, "Results, predictions and logs; rerun to skip finished seeds.", required=True)
distributed.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    distributed.initialize_from_flags(argv)
    with workdir_lock.hold_run(FLAGS.workdir, FLAGS.config.distributed.barrier_timeout_s):
        finetune.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(faults.exits_on_fault(main))
