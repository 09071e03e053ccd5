"""Grain input pipeline over the shards written by `convbert.data.prepare`.

MapDataset.source(PretrainingData) -> shuffle(seed) -> repeat(num_epochs): one global example order, the same on
every process. Global batch s is examples [E + s G, E + (s + 1) G) of it (G = global_batch_size, E =
example_offset, the examples read before); process p reads only rows [p b, (p + 1) b) of each (b = G /
process_count), by index, -> batch(b) -> to_iter_dataset. So the global batches (and the training run) do not
depend on the number of processes. Each element: dict of int32 numpy arrays `input_ids`, `input_mask`,
`segment_ids` of shape [b, T]. A run resumes by reading from the number of examples it had read (E' = E + s G,
recorded in the checkpoint's meta by `convbert.resume`), which continues the same order exactly for any batch
size, process count or worker count; the iterator's own state (`get_state()`: batches read since E) is saved
beside it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os

import grain
import numpy as np
from absl import logging

from convbert.data.example_builder import FIELDS
from convbert.data.prepare import FORMAT, FORMAT_VERSION, MANIFEST, sha256_file
from convbert.fileio import write_atomic

VERIFIED = ".verified.json"  # shards whose checksums a run checked: {file: "sha256 size mtime_ns"}


def load_manifest(data_dir: str) -> dict:
    """The manifest of a prepared data directory; FileNotFoundError names a missing directory or manifest."""
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"pretraining data directory not found: {data_dir}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {MANIFEST} in {data_dir} (incomplete or not prepared): {path}")
    with open(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != FORMAT or manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported format {manifest.get('format')!r} v{manifest.get('format_version')}")
    return manifest


def verify_shards(data_dir: str, shards: list[dict]) -> None:
    """Checks each shard's sha256 against the manifest the first time it is read (ValueError naming the shard); the
    shards verified are remembered (by size and modification time) in `data_dir/.verified.json` where it is
    writable. Manifests written before shards had checksums load with a note."""
    unchecked = [s["file"] for s in shards if "sha256" not in s]
    if unchecked:
        logging.info("%s: written before shards had checksums; %d shard(s) not verified", data_dir, len(unchecked))
    record = os.path.join(data_dir, VERIFIED)
    try:
        with open(record) as f:
            verified = json.load(f)
    except (OSError, ValueError):
        verified = {}
    changed = False
    for shard in shards:
        if "sha256" not in shard:
            continue
        path = os.path.join(data_dir, shard["file"])
        st = os.stat(path)
        stamp = f"{shard['sha256']} {st.st_size} {st.st_mtime_ns}"
        if verified.get(shard["file"]) == stamp:
            continue
        if sha256_file(path) != shard["sha256"]:
            raise ValueError(
                f"{path} is damaged: its sha256 differs from the one {MANIFEST} recorded when it was prepared; "
                "prepare the data again (or restore the shard)"
            )
        verified[shard["file"]], changed = stamp, True
    if changed:
        with contextlib.suppress(OSError):  # a read-only data folder is verified again by the next run
            write_atomic(record, json.dumps(verified, indent=1))


class PretrainingData:
    """Random-access source over one split's memory-mapped shards (verified, `verify_shards`); item i = dict of
    int32 [T] arrays, its token ids checked against the vocabulary (ValueError naming the shard and row)."""

    def __init__(self, data_dir: str, split: str = "train"):
        self.data_dir, self.split = data_dir, split
        self.manifest = load_manifest(data_dir)
        if split not in self.manifest["splits"]:
            raise ValueError(f"{data_dir} has no split {split!r}; splits: {list(self.manifest['splits'])}")
        self._shards = [s for s in self.manifest["splits"][split]["shards"] if s["examples"]]
        verify_shards(data_dir, self._shards)
        self._arrays = [np.load(os.path.join(data_dir, s["file"]), mmap_mode="r") for s in self._shards]
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])
        self._vocab_size = self.manifest["tokenizer"]["vocab_size"]

    @property
    def max_seq_length(self) -> int:
        return self.manifest["max_seq_length"]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        shard = int(np.searchsorted(self._starts, index, side="right")) - 1
        row = np.asarray(self._arrays[shard][index - self._starts[shard]], np.int32)
        ids = row[FIELDS.index("input_ids")]
        if ids.min() < 0 or ids.max() >= self._vocab_size:
            raise ValueError(
                f"{os.path.join(self.data_dir, self._shards[shard]['file'])} row {index - self._starts[shard]}: "
                f"token ids outside the vocabulary [0, {self._vocab_size}) (min {ids.min()}, max {ids.max()}): "
                "the shard is damaged or was prepared with another tokenizer; prepare the data again"
            )
        return dict(zip(FIELDS, row, strict=True))

    def __repr__(self):
        return f"PretrainingData({self.data_dir!r}, split={self.split!r}, n={len(self)})"


def _own_row(i: int, *, examples, global_batch_size: int, batch_size: int, start: int) -> dict[str, np.ndarray]:
    """Row i of this process's stream: example start + (i // b) G + i % b (start: the example offset plus this
    process's first row of a global batch)."""
    return examples[start + i // batch_size * global_batch_size + i % batch_size]


def make_iterator(
    data_dir: str,
    split: str = "train",
    *,
    global_batch_size: int,
    seed: int,
    process_index: int | None = None,
    process_count: int | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    num_workers: int = 0,
    example_offset: int = 0,
    read_options: grain.ReadOptions | None = None,
) -> grain.DatasetIterator:
    """Batches of this process's share of `split` (see module docstring); `num_epochs=None` repeats forever;
    `example_offset`: the first example of the (repeated) global order to read.

    Defaults to `jax.process_index()/process_count()`. `num_workers > 0` adds grain multiprocessing (needs absl
    flags parsed and a `__main__` guard).
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if global_batch_size % process_count:
        raise ValueError(f"global batch_size {global_batch_size} is not divisible by process_count {process_count}")
    batch_size = global_batch_size // process_count
    source = PretrainingData(data_dir, split)
    if len(source) < global_batch_size:
        raise ValueError(f"{source!r} has {len(source)} examples, fewer than one global batch of {global_batch_size}")
    examples = grain.MapDataset.source(source)
    if shuffle:
        examples = examples.shuffle(seed=seed)
    examples = examples.repeat(num_epochs)
    if not 0 <= example_offset <= len(examples):
        raise ValueError(f"example_offset {example_offset} is outside the {len(examples)} examples of {source!r}")
    # batches run across epochs; a last partial one is dropped
    steps = (len(examples) - example_offset) // global_batch_size
    ds = grain.MapDataset.range(steps * batch_size).map(
        functools.partial(
            _own_row,
            examples=examples,
            global_batch_size=global_batch_size,
            batch_size=batch_size,
            start=example_offset + process_index * batch_size,
        )
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    if num_workers:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter(ds)
