"""Fine-tuning throughput in seeds per minute (issue #21, BENCHMARKS.md "Fine-tuning"): seeds one at a time vs
together (`parallel_seeds`), padded vs length-grouped batches (`group_by_length`; evaluation batches are cut in
every row), probe (cached features) vs fine-tune, cold vs warm compilation cache, and a PyTorch
reference (transformers' ConvBertForSequenceClassification fine-tuned one seed at a time), in one invocation.

    python -m benchmarks.bench_finetune --checkpoint=workdirs/pretrain_tiny --task=replaced_word \
        --data_dir=data/transfer --num_seeds=5
    python -m benchmarks.repeat --times 3 -- python -m benchmarks.bench_finetune --checkpoint=workdirs/pretrain_tiny

Every jax row is one `finetune_glue.py` process (wall time from start to exit: start-up, data, compilation and
training of all seeds), in a fresh workdir; 'cold' rows use an empty compilation cache, the others one warmed by a
first untimed run of the same config. The torch row trains the same features, batch, epochs and peak learning
rate with `torch.optim.AdamW` (no layer-wise decay), one seed after the other, in this process. `vs_torch` =
seeds per minute / torch's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks.common import ROOT, machine

# run name -> config overrides of finetune_glue.py, and whether the compilation cache starts empty
RUNS = {
    "sequential": ({"parallel_seeds": 1, "group_by_length": False}, False),
    "parallel": ({"parallel_seeds": 0, "group_by_length": False}, False),
    "parallel_grouped_by_length": ({"parallel_seeds": 0, "group_by_length": True}, False),
    "parallel_cold_cache": ({"parallel_seeds": 0, "group_by_length": False}, True),
    "probe_sequential": ({"parallel_seeds": 1, "freeze_encoder": True}, False),
    "probe_parallel": ({"parallel_seeds": 0, "freeze_encoder": True}, False),
}


def finetune_command(args, workdir: str, overrides: dict) -> list[str]:
    flags = {
        "init_checkpoint": args.checkpoint,
        "data_dir": args.data_dir,
        "num_seeds": args.num_seeds,
        "num_train_epochs": args.epochs,
        **overrides,
    }
    return [
        sys.executable,
        os.path.join(ROOT, "finetune_glue.py"),
        f"--config={os.path.join(ROOT, 'configs', 'finetune_glue.py')}:{args.task},{args.size}",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in flags.items()),
    ]


def timed(command: list[str], cache: str) -> float:
    env = {**os.environ, "CONVBERT_JAX_COMPILATION_CACHE": cache, "PYTHONPATH": ROOT}
    start = time.time()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.time() - start


def torch_seeds(args) -> float:
    """Seconds to fine-tune `args.num_seeds` seeds one after the other with transformers (after loading)."""
    import torch
    import transformers

    from convbert import config_file, finetuning
    from convbert.glue import finetune
    from convbert.glue.tasks import get_task

    config = config_file.load(f"{os.path.join(ROOT, 'configs', 'finetune_glue.py')}:{args.task},{args.size}")
    config.update(init_checkpoint=args.checkpoint, data_dir=args.data_dir)
    source = finetuning.resolve_source(config.init_checkpoint)
    task = get_task(args.task)
    train = finetune.prepare_task(task, config, finetune.load_tokenizer(source.tokenizer_dir), []).train
    torch.set_num_threads(args.threads)
    bs, n = config.batch_size, len(train["labels"])
    start = time.time()
    for seed in range(args.num_seeds):
        torch.manual_seed(seed)
        model = transformers.ConvBertForSequenceClassification.from_pretrained(
            source.model_dir, num_labels=task.num_labels, pad_token_id=0
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.01)
        order = torch.Generator().manual_seed(seed)
        for _ in range(args.epochs):
            perm = torch.randperm(n, generator=order).numpy()
            for i in range(n // bs):
                rows = perm[i * bs : (i + 1) * bs]
                batch = {
                    k: torch.as_tensor(train[k][rows]).long() for k in ("input_ids", "attention_mask", "token_type_ids")
                }
                loss = model(**batch, labels=torch.as_tensor(train["labels"][rows]).long()).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad()
    return time.time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="A pretraining workdir or Hugging Face ConvBERT directory.")
    p.add_argument("--task", default="replaced_word")
    p.add_argument("--data_dir", default=os.path.join(ROOT, "data", "transfer"))
    p.add_argument("--size", default="tiny", help="The recipe of configs/finetune_glue.py.")
    p.add_argument("--num_seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=3, help="Fine-tuning epochs of every row.")
    p.add_argument("--runs", default=",".join([*RUNS, "torch"]), help="Comma-separated rows.")
    p.add_argument("--threads", type=int, default=2, help="torch threads.")
    p.add_argument("--json_out", default="")
    args = p.parse_args()
    runs = args.runs.split(",")
    results, scratch = [], tempfile.mkdtemp(prefix="bench_finetune_")
    warm = os.path.join(scratch, "warm_cache")
    for i, run in enumerate(r for r in runs if r != "torch"):
        overrides, cold = RUNS[run]
        cache = os.path.join(scratch, f"cold_cache_{i}") if cold else warm
        if not cold:  # warms the shared cache with the same programs
            timed(finetune_command(args, os.path.join(scratch, f"warmup_{i}"), overrides), cache)
        seconds = timed(finetune_command(args, os.path.join(scratch, f"run_{i}"), overrides), cache)
        results.append({"run": run, "seconds": seconds, "seeds_per_minute": 60 * args.num_seeds / seconds})
        print(json.dumps(results[-1]), flush=True)
    if "torch" in runs:
        seconds = torch_seeds(args)
        results.append({"run": "torch", "seconds": seconds, "seeds_per_minute": 60 * args.num_seeds / seconds})
        print(json.dumps(results[-1]), flush=True)
        for row in results:
            row["vs_torch"] = row["seeds_per_minute"] / results[-1]["seeds_per_minute"]
    out = {
        "benchmark": "bench_finetune",
        "args": vars(args),
        "machine": machine(),
        "loadavg": os.getloadavg(),
        "results": results,
    }
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
