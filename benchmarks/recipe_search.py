"""Issue 27's recipe search, summarised: identity each recipe buys per CPU second of training.

    anydoor sweep sweeps/recipes.yaml --jobs 2
    python benchmarks/recipe_search.py outputs/sweeps/recipes [--untrained untrained]

For every arm of the sweep: the in-world DINO-I / CLIP-I and PSNR in the mask, each as the paired
difference against the untrained model with its CI (`eval.stats.compare`), the training seconds and
the gain per training CPU second (the sweep's jobs run one thread each: CPU seconds = wall seconds).
Training seconds are the trained model's ``elapsed_s`` (metrics.jsonl) where it logged one, else the
run's wall time minus the untrained run's (whose run is evaluation only).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.stats import compare  # noqa: E402

METRICS = ("dino_i", "clip_i", "psnr_mask")


def _train_seconds(run: Path, eval_seconds: float) -> float:
    metrics = (run / "checkpoint" / "metrics.jsonl")
    if metrics.is_file():
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        if rows and "elapsed_s" in rows[-1]:
            return float(rows[-1]["elapsed_s"])
    return json.loads((run / "DONE").read_text())["seconds"] - eval_seconds


def recipe_table(sweep: Path, untrained: str = "untrained") -> pd.DataFrame:
    runs, frames = {}, []
    index = json.loads((sweep / "sweep.json").read_text())
    for ablation in index["ablations"].values():
        for arm, run_ids in ablation["arms"].items():
            run = sweep / "runs" / run_ids[0]
            if not (run / "DONE").is_file():
                continue
            results = pd.read_parquet(run / "results.parquet").assign(arm=arm)
            runs[arm] = (run, yaml.safe_load((run / "params.yaml").read_text()))
            frames.append(results)
    if untrained not in runs:
        raise ValueError(f"the sweep {str(sweep)!r} has no finished {untrained!r} run")
    df = pd.concat(frames, ignore_index=True)
    diffs = compare(df, untrained, metrics=list(METRICS))
    eval_seconds = json.loads((runs[untrained][0] / "DONE").read_text())["seconds"]
    rows = []
    for arm, (run, params) in runs.items():
        if arm == untrained:
            continue
        seconds = _train_seconds(run, eval_seconds)
        row = {"recipe": arm, "steps": params["max_steps"], "batch": params["batch_size"],
               "lr": params["learning_rate"], "pool": params.get("pair_pool") or 0, "train_s": round(seconds)}
        for metric in METRICS:
            d = diffs[(diffs["arm"] == arm) & (diffs["metric"] == metric)].iloc[0]
            row[f"{metric} vs untrained"] = f"{d['mean_diff']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]"
            row[f"{metric}/CPU-min"] = round(60 * d["mean_diff"] / seconds, 2)
        rows.append(row)
    return pd.DataFrame(rows).sort_values("train_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path)
    parser.add_argument("--untrained", default="untrained")
    args = parser.parse_args()
    table = recipe_table(args.sweep, args.untrained)
    print("| " + " | ".join(table.columns) + " |")
    print("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
