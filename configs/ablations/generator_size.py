# Ablation: the ELECTRA generator's size as a fraction of the discriminator's hidden size (paper section 3.2,
# after ELECTRA's section 3.2: hidden H f, 4 H f intermediate, N f heads). A fraction must give whole heads.
#
#   python ablate.py --config=configs/ablations/generator_size.py:tiny --workdir=workdirs/ablate_generator_size
#     CPU demo: the tiny model (2 heads) with generators of 1/4, 1/2 (reference, the tiny default) and 1 times
#     its width (3/4 would give 1.5 heads), and the no-pretraining control; 600 pretraining steps each, word_order
#     and replaced_word, 3 seeds. Not run yet.
#   python ablate.py --config=configs/ablations/generator_size.py:small --workdir=/shared/ablate_generator_size \
#       --config.pretrain.overrides.data.data_dir=/data/owt [--dry_run]
#     ConvBERT-small (4 heads) with generators of 1/4 (reference, the paper's), 1/2, 3/4 and 1; cost in
#     docs/ablations.md.
from convbert.ablation.study import CONTROL, base_study, variants


def get_config(arg: str = "tiny"):
    scale = arg or "tiny"
    c = base_study(scale, "configs/ablations/generator_size.py")
    fractions = (
        {"gen_1_4": 0.25, "gen_1_2": 0.5, "gen_1_1": 1.0}
        if scale == "tiny"
        else {"gen_1_4": 0.25, "gen_1_2": 0.5, "gen_3_4": 0.75, "gen_1_1": 1.0}
    )
    c.variants = variants(
        **{name: {"electra": {"generator_fraction": f}} for name, f in fractions.items()}, no_pretraining=CONTROL
    )
    c.reference = "gen_1_2" if scale == "tiny" else "gen_1_4"
    c.knob = "electra.generator_fraction"
    return c
