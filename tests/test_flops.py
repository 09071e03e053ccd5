"""Analytic FLOPs (docs/electra.md#flops-accounting) against the ConvBERT paper's table and upstream ELECTRA's
script."""

import subprocess
import sys

import pytest

from configs.pretrain import get_config
from convbert.config import ConvBertConfig, generator_config, size_config
from convbert.flops import layer_terms, model_flops_per_step, total_training_flops, training_flops_per_step

# 1M steps, paper Table 3 (docs/recipes.md#pretraining-recipe)
PAPER = {"small": 1.3e18, "medium_small": 1.5e18, "base": 1.9e19}


@pytest.mark.parametrize("size", sorted(PAPER))
def test_paper_train_flops_within_5_percent(size):
    assert total_training_flops(get_config(size)) == pytest.approx(PAPER[size], rel=0.05)


def test_paper_train_flops_to_its_two_digits():
    """Small and base round to the paper's numbers; medium-small does not (convbert/flops.py docstring)."""
    total = {size: total_training_flops(get_config(size)) for size in PAPER}
    assert f"{total['small']:.1e}" == "1.3e+18" and f"{total['base']:.1e}" == "1.9e+19"
    assert f"{total['medium_small']:.1e}" == "1.6e+18"  # the paper: 1.5e18
    assert total == pytest.approx(dict(small=1.258e18, medium_small=1.567e18, base=1.894e19), rel=1e-3)


def bert(h, e):
    """ELECTRA's plain BERT layer: full-width attention, no conv branch, hidden // 64 heads."""
    return ConvBertConfig(
        hidden_size=h,
        num_attention_heads=max(1, h // 64),
        intermediate_size=4 * h,
        embedding_size=e,
        head_ratio=1,
        conv_type="none",
    )


def test_plain_bert_layers_reproduce_upstream_electra_script():
    # Values of MODEL_FLOPS in google-research/electra flops_computation.py (evaluated from its formulas).
    small = training_flops_per_step(bert(256, 128), bert(64, 128), 128, 128) * 1e6
    base = training_flops_per_step(bert(768, 768), bert(256, 768), 256, 512) * 766_000
    assert small == pytest.approx(1.2937e18, rel=1e-3)
    assert base == pytest.approx(6.4245e19, rel=1e-3)


def test_layer_matmul_flops_by_hand():
    small = size_config("small")  # H 256, A 128, Nr 2, k 9, I 1024
    hand = (
        3 * 2 * 256 * 128
        + 2 * 2 * 128 * 128  # Q/K/V, scores + weighted values
        + 2 * 9 * 256
        + 2 * 256 * 128
        + 2 * 128 * 18
        + 2 * 256 * 128
        + 2 * 9 * 128  # conv branch
        + 2 * 256 * 256
        + 2 * 2 * 256 * 1024
    )  # output dense, FFN
    assert sum(t.flops for t in layer_terms(small, 128) if t.matmul) == hand == 1_584_384
    ms = size_config("medium_small")  # grouped FFN at 1/G
    assert sum(t.flops for t in layer_terms(ms, 128) if t.name in ("intermediate", "output")) == 2 * 2 * 384 * 768


def test_model_flops_per_step():
    disc = size_config("small")
    gen = generator_config(disc, 0.25)
    per_step = model_flops_per_step(disc, gen, 32, 128, 19)
    # 19.2M: the small discriminator's matmul FLOPs per token (12 layers, embedding projection, RTD head)
    disc_fwd_per_token = 12 * 1_584_384 + 2 * 128 * 256 + 2 * 256 * 256 + 2 * 256
    assert disc_fwd_per_token == pytest.approx(19.2e6, rel=0.01)
    assert per_step > 3 * 32 * 128 * disc_fwd_per_token
    assert model_flops_per_step(disc, gen, 64, 128, 19) == pytest.approx(2 * per_step)
    mlm_output = 3 * 32 * 19 * 2 * 128 * 30522
    assert model_flops_per_step(disc, gen, 32, 128, 20) - per_step == pytest.approx(
        mlm_output / 19 + 3 * 32 * 2 * 64 * 128
    )


def test_cli_last_line_is_the_total():
    out = (
        subprocess.run(
            [sys.executable, "-m", "convbert.flops", "--config=configs/pretrain.py:base"],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .splitlines()
    )
    assert len(out) > 3
    assert float(out[-1].split()[-1]) == pytest.approx(total_training_flops(get_config("base")), rel=1e-4)
