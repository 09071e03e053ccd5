"""Ablation studies as config files (`configs/ablations/<name>.py`), run by `ablate.py` through the existing
drivers: `study` resolves a study into `pretrain.py` / `finetune_glue.py` commands and checks it, `runner` runs
or prints them, `results` and `plots` turn the finished runs into `results.{md,json}` and figures."""
