"""ConvBERT fine-tuning on GLUE. The logic lives in `convbert.glue.finetune`; see README "Fine-tuning on GLUE".

  python finetune_glue.py --config=configs/finetune_glue.py:sst2,tiny --config.init_checkpoint=workdirs/pretrain_tiny \
      --config.data_dir=data/glue_sample --workdir=workdirs/glue_tiny
  python finetune_glue.py --config=configs/finetune_glue.py:all,base --config.num_seeds=5 --workdir=workdirs/glue_base
"""

from absl import app, flags, logging
from ml_collections import config_flags

from convbert import distributed
from convbert.glue import finetune

config_flags.DEFINE_config_file("config", "configs/finetune_glue.py:sst2,tiny", "Fine-tuning config (file:task,size).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Results, submission files and logs; rerun to skip finished tasks.",
                    required=True)
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs without auto-detection).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.maybe_initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    logging.info("config %s, overrides %s", config_flags.get_config_filename(FLAGS["config"]),
                 config_flags.get_override_values(FLAGS["config"]))
    finetune.run(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
