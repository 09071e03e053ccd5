"""ConvBERT fine-tuning on GLUE. The logic lives in `convbert.glue.finetune`; see docs/glue.md.

  python finetune_glue.py --config=configs/finetune_glue.py:sst2,tiny --config.init_checkpoint=workdirs/pretrain_tiny \
      --config.data_dir=data/glue_sample --workdir=workdirs/glue_tiny
  python finetune_glue.py --config=configs/finetune_glue.py:all,base --config.num_seeds=5 --workdir=workdirs/glue_base
"""

from absl import app, flags

from convbert import config_file, distributed, faults, workdir_lock
from convbert.glue import finetune

config_file.define("configs/finetune_glue.py:sst2,tiny", "Fine-tuning config (file:task,size).")
flags.DEFINE_string("workdir", None, "Results, submission files and logs; rerun to skip finished tasks.", required=True)
distributed.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    distributed.initialize_from_flags(argv)
    with workdir_lock.hold_run(FLAGS.workdir, FLAGS.config.distributed.barrier_timeout_s):
        finetune.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(faults.exits_on_fault(main))
