"""The pair pool (issue 27): training throughput with and without it, and the held-out loss check.

    python benchmarks/pair_pool.py throughput [--steps 60] [--pool 1200]
    python benchmarks/pair_pool.py heldout RUN_DIR... [--size 256]

``throughput`` trains the demo's recipe (configs/train_tiny.yaml) for ``--steps``
steps with fresh pairs and with a pool, one thread each (as the demo's two
parallel jobs run), and prints samples/s of the steady state (the log window
after the first, pool preparation excluded) and the time the pool took to prepare.

``heldout`` scores trained runs (folders with ``pipeline/`` and the
``config.yaml`` they trained with) on the diffusion loss over a pool prepared from
the same data sources with another seed (pairs the run never saw) and over the
run's own first pairs: a gap that grows with reuse is overfitting to the pool.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anydoor import AnyDoorPipeline  # noqa: E402
from anydoor.training import train  # noqa: E402
from anydoor.training.config import load_config  # noqa: E402
from anydoor.training.loop import _build_dataset, pool_loss  # noqa: E402
from anydoor.training.pair_pool import prepare_pool  # noqa: E402

HELDOUT_SEED = 12_345


def throughput(steps: int, pool: int) -> None:
    torch.set_num_threads(1)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in (("fresh pairs", []), (f"pool {pool}", [f"pair_pool={pool}"])):
            out = Path(tmp) / name.replace(" ", "_")
            config = load_config(ROOT / "configs/train_tiny.yaml", [
                f"max_steps={steps}", f"output_dir={out}", "sample_every=0", "wandb_project=null",
                "checkpoint_every=100000", "log_every=20", *extra,
            ])
            start = time.perf_counter()
            train(config)
            wall = time.perf_counter() - start
            lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
            steady = [x["samples_per_s"] for x in lines[1:]]
            rows[name] = (sum(steady) / len(steady), wall)
    for name, (rate, wall) in rows.items():
        print(f"{name:>14}: {rate:6.1f} samples/s (steady state), {wall:6.1f} s for {steps} steps incl. set-up")


def heldout(runs: list[Path], size: int) -> None:
    for run in runs:
        config = load_config(run / "config.yaml")
        pipe = AnyDoorPipeline.from_pretrained(run / "pipeline")
        held = dataclasses.replace(config, seed=HELDOUT_SEED)
        pools = {
            "held-out": prepare_pool(_build_dataset(held, 64), size, pipe.vae, pipe.id_extractor, progress=False),
            "seen": prepare_pool(_build_dataset(config, 64), size, pipe.vae, pipe.id_extractor, progress=False),
        }
        losses = {name: pool_loss(pipe, pool) for name, pool in pools.items()}
        print(json.dumps({"run": str(run), "pair_pool": config.pair_pool, "steps": config.max_steps,
                          "batch_size": config.batch_size, **{f"loss_{k}": round(v, 5) for k, v in losses.items()}}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--pool", type=int, default=1200)
    p = sub.add_parser("heldout")
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    if args.command == "throughput":
        throughput(args.steps, args.pool)
    else:
        heldout(args.runs, args.size)


if __name__ == "__main__":
    main()
