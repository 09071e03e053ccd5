"""Ablation studies from config files: pretrain every variant of a study, fine-tune each on the study's tasks and
compare them in one table with plots. The logic lives in `convbert.ablation`; see README "Ablation studies".

  python ablate.py --config=configs/ablations/head_ratio.py:tiny --workdir=workdirs/ablate_head_ratio
  python ablate.py --config=configs/ablations/conv_type.py:small --workdir=/shared/ablate_conv_type \
      --config.pretrain.overrides.data.data_dir=/data/owt --dry_run   # the commands, commands.sh and slurm.sh
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from convbert import compile_cache, validation
from convbert.ablation import runner
from convbert.ablation.study import StudyError, flag_value

validation.define_config_file(None, "Study config (configs/ablations/NAME.py:SCALE, SCALE tiny or small).")
flags.DEFINE_string("workdir", None, "The study's runs, results.md / results.json and plots; rerun to resume.")
flags.DEFINE_list("only", [], "Run only these variants (comma-separated names).")
flags.DEFINE_bool(
    "dry_run",
    False,
    "Print the commands, one per line, and write WORKDIR/commands.sh and WORKDIR/slurm.sh instead of running them.",
)
compile_cache.define_flag()
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def override_flags() -> list[str]:
    """The --config.KEY=VALUE flags given, as flags again (tuples as repeated flags)."""
    out = []
    for key, value in config_flags.get_override_values(FLAGS["config"]).items():
        for v in value if isinstance(value, tuple) else (value,):
            out.append(f"--config.{key}={flag_value(v)}")
    return out


def main(argv):
    del argv
    jax.config.update("jax_platforms", "cpu")  # the runner only traces shapes; the drivers it starts own the devices
    compile_cache.enable_from_flags()  # exported to the stages it starts
    try:
        runner.run(
            FLAGS.config,
            config_flags.get_config_filename(FLAGS["config"]),
            FLAGS.workdir,
            only=FLAGS.only,
            dry_run=FLAGS.dry_run,
            overrides=override_flags(),
        )
    except (StudyError, runner.StageFailed) as e:
        sys.exit(f"ablate.py: {e}")


if __name__ == "__main__":
    app.run(main)
