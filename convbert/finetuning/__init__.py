"""The fine-tuning core shared by the GLUE and SQuAD drivers (`convbert.glue`, `convbert.squad`): `sources` (where
the encoder comes from: a pretraining workdir, a Hugging Face directory or hub id, or the `random:SRC` control)
and `trainer` (the recipe's config and optimizer, seeds trained together as one program, cached probe features,
the epoch loop, the median seed)."""

from convbert.finetuning.sources import (
    RANDOM_INIT,
    Encoder,
    Source,
    has_hf_head,
    load_encoder,
    resolve_source,
)
from convbert.finetuning.trainer import (
    ENCODER,
    PROBES,
    SeedsDiverged,
    Trainer,
    default_config,
    make_optimizer,
    median_seed,
    predict,
    row_lengths,
    seed_group_size,
    seed_groups,
    train_epochs,
    train_scored,
    write_json,
)

__all__ = [
    "ENCODER",
    "PROBES",
    "RANDOM_INIT",
    "Encoder",
    "SeedsDiverged",
    "Source",
    "Trainer",
    "default_config",
    "has_hf_head",
    "load_encoder",
    "make_optimizer",
    "median_seed",
    "predict",
    "resolve_source",
    "row_lengths",
    "seed_group_size",
    "seed_groups",
    "train_epochs",
    "train_scored",
    "write_json",
]
