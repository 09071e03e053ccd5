# Ablation: the convolution branch of mixed attention (paper section 3): span-based dynamic convolution (sdconv,
# kernels from the query and a span-aware key), dynamic convolution (dconv, kernels from the query alone),
# lightweight convolution (lconv, one learned kernel per head) and none (the bottleneck self-attention alone).
#
#   python ablate.py --config=configs/ablations/conv_type.py:tiny --workdir=workdirs/ablate_conv_type
#     CPU demo: the tiny model (2 heads, γ = 2, kernel 9) with each conv type, and the no-pretraining control;
#     600 pretraining steps each, word_order and replaced_word, 3 seeds; results: docs/ablations/conv_type_tiny/.
#   python ablate.py --config=configs/ablations/conv_type.py:small --workdir=/shared/ablate_conv_type \
#       --config.pretrain.overrides.data.data_dir=/data/owt [--dry_run]
#     ConvBERT-small with each conv type, the paper's recipe, GLUE dev + transfer suite; cost in docs/ablations.md.
from convbert.ablation.study import CONTROL, base_study, variants


def get_config(arg: str = "tiny"):
    scale = arg or "tiny"
    c = base_study(scale, "configs/ablations/conv_type.py")
    c.variants = variants(
        none={"model": {"conv_type": "none"}},
        lconv={"model": {"conv_type": "lconv"}},
        dconv={"model": {"conv_type": "dconv"}},
        sdconv={},  # ConvBERT
        no_pretraining=CONTROL,
    )
    c.reference = "sdconv"
    c.knob = "model.conv_type"
    return c
