"""ELECTRA-style ConvBERT pretraining. The logic lives in `convbert.pretraining`; see README "Pretraining".

  python pretrain.py                                   # tiny model on the bundled corpus, a few CPU minutes
  python pretrain.py --config=configs/pretrain.py:small --workdir=/ckpt/small --config.batch_size=256
"""

from absl import app, flags, logging
from ml_collections import config_flags

from convbert import distributed, pretraining

config_flags.DEFINE_config_file("config", "configs/pretrain.py:tiny", "Pretraining config (file:size).",
                                lock_config=True)
flags.DEFINE_string("workdir", "workdirs/pretrain_tiny", "Checkpoints, logs and exports; rerun to resume.")
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
    pretraining.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
