"""GLUE fine-tuning and evaluation (docs/recipes.md#glue-fine-tuning): task specs, data loading and
featurisation, metrics and the GLUE scores, submission files, and the fine-tuning run (`convbert.glue.finetune.run`)."""
