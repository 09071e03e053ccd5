# Ablation: the head ratio γ of the bottleneck (paper section 3.2): each branch (self-attention and span-based
# dynamic convolution) keeps N / γ of the N heads, so γ = 1 doubles the attention width of the released γ = 2.
#
#   python ablate.py --config=configs/ablations/head_ratio.py:tiny --workdir=workdirs/ablate_head_ratio
#     CPU demo: the tiny model with 4 heads of 32 (the main job's has 2 heads, which allow only γ = 1, 2),
#     γ = 1, 2 (reference), 4, and the no-pretraining control of the γ = 2 config; 600 pretraining steps each,
#     fine-tuned on word_order and replaced_word (docs/transfer.md), 3 seeds. Results: docs/ablations.md#results.
#   python ablate.py --config=configs/ablations/head_ratio.py:small --workdir=/shared/ablate_head_ratio \
#       --config.pretrain.overrides.data.data_dir=/data/owt [--dry_run]
#     ConvBERT-small (4 heads) at γ = 1, 2, 4 with the paper's recipe (1M steps), GLUE dev (headline: the GLUE
#     score) and the transfer suite, 3 seeds; cost in docs/ablations.md. γ = 8 needs at least 8 heads
#     (ConvBertConfig rejects head_ratio > num_attention_heads), so neither scale has it.
from convbert.ablation.study import CONTROL, base_study, variants


def get_config(arg: str = "tiny"):
    scale = arg or "tiny"
    c = base_study(scale, "configs/ablations/head_ratio.py")
    if scale == "tiny":
        c.pretrain.overrides.model = dict(num_attention_heads=4)  # hidden 128: 4 heads of 32
    c.variants = variants(
        gamma_1={"model": {"head_ratio": 1}},
        gamma_2={},  # the released setting
        gamma_4={"model": {"head_ratio": 4}},
        no_pretraining=CONTROL,
    )
    c.reference = "gamma_2"
    c.knob = "model.head_ratio"
    return c
