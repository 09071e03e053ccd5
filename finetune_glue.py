"""ConvBERT fine-tuning on GLUE. The logic lives in `convbert.glue.finetune`; see docs/glue.md.

  python finetune_glue.py --config=configs/finetune_glue.py:sst2,tiny --config.init_checkpoint=workdirs/pretrain_tiny \
      --config.data_dir=data/glue_sample --workdir=workdirs/glue_tiny
  python finetune_glue.py --config=configs/finetune_glue.py:all,base --config.num_seeds=5 --workdir=workdirs/glue_base
"""

import sys

from absl import app, flags

from convbert import config_file, distributed, finetuning
from convbert.glue import finetune

config_file.define("configs/finetune_glue.py:sst2,tiny", "Fine-tuning config (file:task,size).")
flags.DEFINE_string("workdir", None, "Results, submission files and logs; rerun to skip finished tasks.", required=True)
distributed.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    distributed.initialize_from_flags(argv)
    try:
        finetune.run(FLAGS.config, FLAGS.workdir)
    except finetuning.SeedsDiverged as e:  # the finished seeds' results are written
        print(f"finetune_glue.py: {e}", file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    app.run(main)
