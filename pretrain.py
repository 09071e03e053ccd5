"""ELECTRA-style ConvBERT pretraining. The logic lives in `convbert.pretraining`; see docs/pretraining.md.

python pretrain.py                                   # tiny model on the bundled corpus, a few CPU minutes
python pretrain.py --config=configs/pretrain.py:small --workdir=/ckpt/small --config.batch_size=256
"""

from absl import app, flags
from ml_collections import config_flags

from convbert import config_file, distributed, faults, pretraining

config_file.define("configs/pretrain.py:tiny", "Pretraining config (file:size).")
flags.DEFINE_string("workdir", "workdirs/pretrain_tiny", "Checkpoints, logs and exports; rerun to resume.")
distributed.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    distributed.initialize_from_flags(argv)
    overrides = config_flags.get_override_values(FLAGS["config"])  # init_from refuses those SRC decides
    pretraining.train_and_evaluate(FLAGS.config, FLAGS.workdir, overrides=overrides)


if __name__ == "__main__":
    app.run(faults.exits_on_fault(main))
