"""Reported ConvBERT SQuAD **dev** numbers, printed beside ours in `results.md`.

The paper's Table 4 (ConvBERT, arXiv 2008.02496; "train longer" = the 4M-update models) and a third-party
fine-tune of the released `YituTech/conv-bert-base` weights (JunnYu/paddle_convbert README: max length 512, batch
16, lr 1e-4, 2 epochs; its v2.0 best-threshold numbers are 81.2 / 84.1). Keys as `convbert.squad.metrics`.
"""

from __future__ import annotations

from convbert.finetuning.reference import Reference


def _em_f1(v1: str, v2: str) -> dict[str, dict[str, float]]:
    (em1, f11), (em2, f12) = (tuple(map(float, s.split())) for s in (v1, v2))
    return {"v1": {"exact_match": em1, "f1": f11}, "v2": {"exact_match": em2, "f1": f12}}


REFERENCES: dict[str, list[Reference]] = {
    "small": [
        Reference("paper, dev", _em_f1("77.1 84.1", "68.7 70.5")),
        Reference("paper, train longer, dev", _em_f1("78.8 85.5", "71.2 73.6")),
    ],
    "medium_small": [
        Reference("paper, dev", _em_f1("79.4 86.0", "71.7 74.3")),
        Reference("paper, train longer, dev", _em_f1("81.5 88.1", "74.3 76.8")),
    ],
    "base": [
        Reference("paper, dev", _em_f1("84.7 90.9", "80.6 83.1")),
        Reference(
            "third-party dev [JunnYu/paddle_convbert]",
            {
                **_em_f1("84.8 91.3", "80.9 83.9"),
                "v2": {"exact_match": 80.9, "f1": 83.9, "best_exact": 81.2, "best_f1": 84.1},
            },
        ),
    ],
}
