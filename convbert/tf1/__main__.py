"""python -m convbert.tf1 --checkpoint=PATH/model.ckpt-N --size=small --output_dir=DIR [--workdir=W]
(docs/checkpoints.md#tf1-checkpoints).

Writes DIR/discriminator and DIR/generator in Hugging Face format with the vocabulary `--vocab`; with `--workdir`
also a pretraining checkpoint (parameters, Adam slots, step) that `pretrain.py --workdir=W` continues.
"""

import os

from absl import app, flags, logging

from convbert.assets import BERT_UNCASED_VOCAB
from convbert.tf1 import convert

flags.DEFINE_string("checkpoint", None, "TF1 checkpoint prefix (PATH/model.ckpt-N) or its directory.", required=True)
flags.DEFINE_enum("size", None, list(convert.PRESETS), "The released model's size (or give --config).")
flags.DEFINE_string("config", None, "The discriminator's config.json (ConvBERT's or ELECTRA's), instead of --size.")
flags.DEFINE_float("generator_fraction", None, "Generator hidden / discriminator hidden (default: the size's).")
flags.DEFINE_string("vocab", BERT_UNCASED_VOCAB, "WordPiece vocab.txt written beside the models.")
flags.DEFINE_bool("lowercase", True, "Whether the vocabulary is uncased.")
flags.DEFINE_string("output_dir", None, "Writes OUTPUT_DIR/discriminator and OUTPUT_DIR/generator.", required=True)
flags.DEFINE_string("workdir", None, "Also write a pretraining checkpoint here (an empty or new folder).")
flags.DEFINE_string(
    "pretrain_config", None, "The pretraining config of --workdir's checkpoint (default configs/pretrain.py:<recipe>)."
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    disc, gen, fraction, recipe = convert.configs_for(FLAGS.size, FLAGS.config, FLAGS.generator_fraction)
    variables = convert.read_checkpoint(FLAGS.checkpoint)
    converted = convert.convert(variables, disc, gen, FLAGS.checkpoint)
    logging.info(
        "%s: %d variables, Adam slots %s, global_step %s",
        FLAGS.checkpoint,
        len(variables),
        "present" if converted.slots else "absent",
        converted.step,
    )
    convert.write_hf(converted.model, FLAGS.vocab, FLAGS.output_dir, FLAGS.lowercase)
    logging.info("wrote %s", ", ".join(os.path.join(FLAGS.output_dir, n) for n in ("discriminator", "generator")))
    if FLAGS.workdir:
        spec = FLAGS.pretrain_config or f"configs/pretrain.py:{recipe}"
        config = convert.pretraining_config(disc, fraction, spec)
        path = convert.write_pretraining_checkpoint(converted, config, FLAGS.workdir, FLAGS.checkpoint)
        flags_needed = convert.model_flags(config, spec)
        logging.info(
            "wrote %s. Continue pretraining (raise num_train_steps past %d; prepare data with --vocab=%s):\n"
            "  python pretrain.py --config=%s --workdir=%s --config.num_train_steps=N --config.data.data_dir=DATA %s",
            path,
            converted.step or 0,
            FLAGS.vocab,
            spec,
            FLAGS.workdir,
            " ".join(flags_needed),
        )


if __name__ == "__main__":
    app.run(main)
