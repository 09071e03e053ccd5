"""Ablation studies from config files: pretrain every variant of a study, fine-tune each on the study's tasks and
compare them in one table with plots. The logic lives in `convbert.ablation`; see docs/ablations.md.

  python ablate.py --config=configs/ablations/head_ratio.py:tiny --workdir=workdirs/ablate_head_ratio
  python ablate.py --config=configs/ablations/conv_type.py:small --workdir=/shared/ablate_conv_type \
      --config.pretrain.overrides.data.data_dir=/data/owt --dry_run   # the commands, commands.sh and slurm.sh
"""

import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from convbert import compile_cache, config_file, faults, workdir_lock
from convbert.ablation import runner
from convbert.ablation.study import StudyError

_CONFIG = config_file.define(None, "Study config (configs/ablations/NAME.py:SCALE, SCALE tiny or small).")
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


def main(argv):
    del argv
    jax.config.update("jax_platforms", "cpu")  # the runner only traces shapes; the drivers it starts own the devices
    compile_cache.enable_from_flags()  # exported to the stages it starts
    try:
        with workdir_lock.hold(FLAGS.workdir):
            runner.run(
                FLAGS.config,
                config_flags.get_config_filename(FLAGS["config"]),
                FLAGS.workdir,
                only=FLAGS.only,
                dry_run=FLAGS.dry_run,
                overrides=config_file.override_flags(_CONFIG),
            )
    except (StudyError, runner.StageFailed) as e:
        sys.exit(f"ablate.py: {e}")


if __name__ == "__main__":
    app.run(faults.exits_on_fault(main))
