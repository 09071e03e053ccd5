# Ablation: the kernel size k of the span-based dynamic convolution (paper section 4; the released models use 9).
# k = 1 reduces the convolution branch to a per-token gate of the value.
#
#   python ablate.py --config=configs/ablations/kernel_size.py:tiny --workdir=workdirs/ablate_kernel_size
#     CPU demo: the tiny model with k = 1, 3, 5, 9 (reference), 15 and the no-pretraining control; 600 pretraining
#     steps each, word_order and replaced_word, 3 seeds. Not run yet.
#   python ablate.py --config=configs/ablations/kernel_size.py:small --workdir=/shared/ablate_kernel_size \
#       --config.pretrain.overrides.data.data_dir=/data/owt [--dry_run]
#     ConvBERT-small with each kernel, the paper's recipe, GLUE dev + transfer suite; cost in docs/ablations.md.
from convbert.ablation.study import CONTROL, base_study, variants


def get_config(arg: str = "tiny"):
    scale = arg or "tiny"
    c = base_study(scale, "configs/ablations/kernel_size.py")
    c.variants = variants(
        k_1={"model": {"conv_kernel_size": 1}},
        k_3={"model": {"conv_kernel_size": 3}},
        k_5={"model": {"conv_kernel_size": 5}},
        k_9={},  # the released setting
        k_15={"model": {"conv_kernel_size": 15}},
        no_pretraining=CONTROL,
    )
    c.reference = "k_9"
    c.knob = "model.conv_kernel_size"
    return c
