# Ablation: ConvBERT built up from BERT-style self-attention (paper section 4, its component ablation):
#   self_attention  conv_type none, head_ratio 1: all N heads of plain self-attention (BERT's layer)
#   bnk             + bottleneck (BNK): N / 2 self-attention heads, the attention width halved (head_ratio 2)
#   bnk_gl          + grouped linear FFN (GL): both FFN projections in 2 groups (num_groups 2)
#   convbert        + span-based dynamic convolution in the freed heads (conv_type sdconv) = ConvBERT with GL,
#                   as the paper's medium-small model
# Each variant sets all three knobs, so the study does not depend on the base config's values.
#
#   python ablate.py --config=configs/ablations/components.py:tiny --workdir=workdirs/ablate_components
#     CPU demo: the tiny model (2 heads), the four steps and the no-pretraining control; 600 pretraining steps
#     each, word_order and replaced_word, 3 seeds; results: docs/ablations/components_tiny/results.md.
#   python ablate.py --config=configs/ablations/components.py:small --workdir=/shared/ablate_components \
#       --config.pretrain.overrides.data.data_dir=/data/owt [--dry_run]
#     On ConvBERT-small, the paper's recipe, GLUE dev + transfer suite; cost in docs/ablations.md.
from convbert.ablation.study import CONTROL, base_study, variants


def get_config(arg: str = "tiny"):
    scale = arg or "tiny"
    c = base_study(scale, "configs/ablations/components.py")
    c.variants = variants(
        self_attention={"model": {"conv_type": "none", "head_ratio": 1, "num_groups": 1}},
        bnk={"model": {"conv_type": "none", "head_ratio": 2, "num_groups": 1}},
        bnk_gl={"model": {"conv_type": "none", "head_ratio": 2, "num_groups": 2}},
        convbert={"model": {"conv_type": "sdconv", "head_ratio": 2, "num_groups": 2}},
        no_pretraining=CONTROL,
    )
    c.reference = "convbert"
    return c
