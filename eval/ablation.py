"""Read a sweep's results back per ablation: arms, baselines, reference rows.

The ablation notebooks and the report call these; they read the run folders
alone (`sweep.json`, each run's `results.parquet` and `metrics.jsonl`), never
a W&B server.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path

import pandas as pd

from eval.arm import arm_metric_backbones
from eval.stats import compare, summarize
from eval.sweeps import DONE

BASELINE_DIR = "baselines"
REFERENCE_ROWS = "reference_rows"  # the spec's ablation of reference rows (untrained model, other guidance)
GROUND_TRUTH_METRICS = ("psnr_mask", "ssim_mask")
TABLE_METRICS = ("clip_i", "dino_i", "retrieved", "psnr_mask", "ssim_mask", "seam", "diversity")


def load_index(sweep_dir: str | PathLike) -> dict:
    path = Path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} not found: run `anydoor sweep SPEC --sweep-dir {sweep_dir}` first")
    return json.loads(path.read_text())


def run_results(sweep_dir: str | PathLike, run_id: str) -> pd.DataFrame | None:
    run_dir = Path(sweep_dir) / "runs" / run_id
    if not (run_dir / DONE).exists():
        return None
    return pd.read_parquet(run_dir / "results.parquet")


def ensure_baselines(sweep_dir: str | PathLike, benchmark: str, seeds, metric_backbones: str) -> pd.DataFrame:
    """The non-learned baselines (scene, copy-paste), computed once per sweep with the sweep's
    metric backbones (`metric_backbones`: "real", "world" or "random")."""
    from eval.runner import BASELINES, evaluate_baseline

    folder = Path(sweep_dir) / BASELINE_DIR
    path = folder / "results.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    folder.mkdir(parents=True, exist_ok=True)
    frames = [
        evaluate_baseline(name, benchmark, seeds=list(seeds), metric_backbones=metric_backbones,
                          save_images=folder / name, progress=False)
        for name in BASELINES
    ]
    results = pd.concat(frames, ignore_index=True)
    tmp = folder / ".results.parquet.tmp"
    results.to_parquet(tmp)
    tmp.replace(path)
    return results


@dataclass
class Ablation:
    """One ablation's results: `results` has one row per (arm, pair, seed),
    the arm names of the spec in column ``arm``; `rows` says which arms are
    the ablation's, the baselines' and the reference rows'."""

    name: str
    description: str
    reference: str
    arms: list[str]
    run_ids: dict[str, list[str]]  # arm -> its runs (one per training seed)
    results: pd.DataFrame
    baseline_arms: list[str] = field(default_factory=list)
    reference_arms: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    paper_table: str | None = None

    @property
    def all_arms(self) -> list[str]:
        return [*self.arms, *self.reference_arms, *self.baseline_arms]

    def summary(self, metrics=TABLE_METRICS, seed: int = 0) -> pd.DataFrame:
        return summarize(self.results, by="arm", metrics=[m for m in metrics if m in self.results], seed=seed)

    def comparisons(self, metrics=TABLE_METRICS, seed: int = 0) -> pd.DataFrame:
        """Paired differences of every other row against the reference arm,
        Holm-corrected across them (per metric)."""
        metrics = [m for m in metrics if m in self.results and self.results[m].notna().any()]
        return compare(self.results, self.reference, metrics=metrics, seed=seed)

    def table(self, metrics=TABLE_METRICS, seed: int = 0) -> pd.DataFrame:
        """The paper-shaped table: one row per arm, "mean [low, high]" per metric."""
        summary = self.summary(metrics, seed)
        if summary.empty:
            return pd.DataFrame()
        def cell(r) -> str:  # 3 decimals for metrics in [0, 1] (SSIM, diversity), else 2
            digits = 3 if abs(r["mean"]) <= 1 and abs(r["ci_high"]) <= 1 else 2
            return f"{r['mean']:.{digits}f} [{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"

        summary["cell"] = summary.apply(cell, axis=1)
        table = summary.pivot_table(index="arm", columns="label", values="cell", aggfunc="first")
        n = summary.groupby("arm")["n"].max()
        table.insert(0, "n", n)
        order = [a for a in self.all_arms if a in table.index]
        table = table.loc[order]
        table.insert(0, "role", ["arm" if a in self.arms else "baseline" if a in self.baseline_arms else "reference row"
                                 for a in table.index])
        labels = summary.drop_duplicates("metric").set_index("metric")["label"]
        return table[["role", "n", *[labels[m] for m in metrics if m in labels.index]]]


def load_ablation(sweep_dir: str | PathLike, name: str, with_baselines: bool = True,
                  with_reference_rows: bool = True) -> Ablation:
    """Collect an ablation's finished runs (missing ones are listed, not fatal)."""
    sweep_dir = Path(sweep_dir)
    index = load_index(sweep_dir)
    if name not in index["ablations"]:
        raise ValueError(f"ablation {name!r} is not in the sweep; known: {sorted(index['ablations'])}")
    spec = index["ablations"][name]
    frames, missing = [], []

    def add(arm: str, rids: list[str]) -> bool:
        found = [(rid, run_results(sweep_dir, rid)) for rid in rids]
        if any(df is None for _, df in found):
            missing.append(arm)
            return False
        frames.extend(df.assign(arm=arm, run_id=rid) for rid, df in found)
        return True

    arms = [arm for arm, rids in spec["arms"].items() if add(arm, rids)]
    reference_arms: list[str] = []
    if with_reference_rows and name != REFERENCE_ROWS and REFERENCE_ROWS in index["ablations"]:
        rows = index["ablations"][REFERENCE_ROWS]
        ours = {rid for rids in spec["arms"].values() for rid in rids}
        # Every row whose runs are not this ablation's own (the full method's are: it is each
        # ablation's reference), whether or not it is the reference of the reference rows.
        for arm, rids in rows["arms"].items():
            if not set(rids) & ours and add(arm, rids):
                reference_arms.append(arm)
    baseline_arms: list[str] = []
    if with_baselines and frames:
        params = index["parameters"]
        baselines = ensure_baselines(sweep_dir, index["benchmark"], params["seeds"], arm_metric_backbones(params))
        frames.append(baselines)
        baseline_arms = sorted(baselines["arm"].unique())
    results = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    reference = spec.get("reference") or (arms[-1] if arms else "")
    return Ablation(
        name=name,
        description=spec.get("description", ""),
        reference=reference,
        arms=arms,
        run_ids={arm: list(rids) for arm, rids in spec["arms"].items()},
        results=results,
        baseline_arms=baseline_arms,
        reference_arms=reference_arms,
        missing=missing,
        paper_table=spec.get("paper_table"),
    )


def training_curves(sweep_dir: str | PathLike, ablation: Ablation) -> dict[str, pd.DataFrame]:
    """arm -> its metrics.jsonl (loss per step), for the arms that trained."""
    curves = {}
    for arm in ablation.arms + ablation.reference_arms:
        for rid in sorted(ablation.results.loc[ablation.results["arm"] == arm, "run_id"].unique()):
            path = Path(sweep_dir) / "runs" / rid / "checkpoint" / "metrics.jsonl"
            if path.is_file():
                label = arm if len(curves.get(arm, ())) == 0 and arm not in curves else f"{arm} ({rid})"
                curves[label] = pd.read_json(path, lines=True)
    return curves


def log_ablation_to_wandb(ablation: Ablation, sweep_dir: str | PathLike, project: str = "anydoor-ablations") -> str:
    """The ablation's table and comparisons as one W&B run (job_type
    "ablation", group = the sweep), offline unless WANDB_MODE says otherwise.
    Its id is derived from the sweep and the ablation, so a rerun updates it."""
    import os

    import wandb

    from eval.sweeps import run_id

    os.environ.setdefault("WANDB_MODE", "offline")
    index = load_index(sweep_dir)
    folder = Path(sweep_dir) / "ablations" / ablation.name
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        id=run_id({"sweep": index["name"], "ablation": ablation.name}),
        resume="allow",
        group=index["name"],
        job_type="ablation",
        name=f"{index['name']}/{ablation.name}",
        tags=[ablation.name],
        config={"ablation": ablation.name, "reference": ablation.reference, "arms": ablation.run_ids},
        dir=str(folder),
        reinit="finish_previous",
    )
    try:
        summary = ablation.summary()
        run.log({
            "summary": wandb.Table(dataframe=summary.astype({c: str for c in ("backbone",) if c in summary})),
            "comparisons": wandb.Table(dataframe=ablation.comparisons()),
        })
        return str(Path(run.dir).parent)
    finally:
        run.finish()
