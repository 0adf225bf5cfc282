"""One arm of an ablation, end to end: train (or load), evaluate, log, mark done.

`notebooks/train_evaluate.ipynb` is a thin sequence of these calls, so the
notebook, the sweep runner and a plain Python session do the same thing.
Arm parameters are the notebook's parameters (flat, typed); training
parameters map onto the training config named by ``train_config``.
"""

from __future__ import annotations

import json
import os
import time
from os import PathLike
from pathlib import Path

import pandas as pd

from eval.sweeps import DONE, folder_lock, run_id

# The parameters of notebooks/train_evaluate.ipynb (its `parameters` cell
# documents each); `collect_params` picks them from the notebook's globals.
ARM_PARAMETER_NAMES = (
    "run_dir", "run_id", "sweep_name", "sweep_dir", "tags", "benchmark", "train_config", "checkpoint",
    "preset", "vae", "base_unet", "id_extractor", "id_backbone", "remove_background", "detail_map", "timestep_sampler",
    "trainable", "conditioning_dropout", "max_steps", "batch_size", "learning_rate", "pair_pool", "train_seed", "seeds",
    "num_inference_steps", "guidance_scale", "shape_control", "wrong_reference", "metric_backbones", "random_backbones", "eval_batch_size",
    "wandb_project", "world_models",
)

# Arm parameter -> training config key.
TRAIN_KEYS = {
    "preset": "model.preset",
    "vae": "model.vae",
    "base_unet": "model.base_unet",
    "id_extractor": "model.id_extractor",
    "id_backbone": "model.id_backbone",
    "remove_background": "model.remove_background",
    "detail_map": "model.detail_map",
    "timestep_sampler": "timestep_sampler",
    "trainable": "model.trainable",
    "conditioning_dropout": "cond_dropout",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "learning_rate": "learning_rate",
    "pair_pool": "pair_pool",
    "train_seed": "seed",
}


# What a trained model depends on: the training config file and the parameters
# that override it. Arms agreeing on these share one trained model (e.g. the
# full method at guidance 5.0 and 1.0); the rest (evaluation parameters and the
# run's identity: run_dir, run_id, tags, sweep_name, sweep_dir, wandb_project)
# never trigger a training of their own.
TRAINING_INPUTS = ("train_config", "world_models", *TRAIN_KEYS)


def trained_model_key(params: dict) -> str:
    """The key of the arm's trained model in a sweep (``<sweep_dir>/trained/<key>``)."""
    return run_id({k: params[k] for k in TRAINING_INPUTS if k in params})


def arm_metric_backbones(params: dict) -> str:
    """The arm's metric backbones: `metric_backbones` ("real", "world", "random"; `random_backbones`
    is its older spelling of "random"), by default "world" for the tiny preset, "real" otherwise."""
    from eval.runner import resolve_metric_backbones

    default = "world" if params.get("preset") == "tiny" else "real"
    return resolve_metric_backbones(params.get("metric_backbones") or None, bool(params.get("random_backbones")), default)


def collect_params(namespace: dict) -> dict:
    """The arm's parameters from a namespace (the notebook's globals)."""
    missing = [name for name in ARM_PARAMETER_NAMES if name not in namespace]
    if missing:
        raise ValueError(f"arm parameters missing: {missing}")
    params = {name: namespace[name] for name in ARM_PARAMETER_NAMES}
    if isinstance(params["seeds"], (int, str)):
        params["seeds"] = [int(s) for s in str(params["seeds"]).replace(",", " ").split()]
    return params


def train_config_for(params: dict, output_dir: str | PathLike, pair_pool_dir: str | PathLike | None = None):
    """The arm's `TrainConfig`: the file `params["train_config"]` with the arm's overrides.

    ``pair_pool_dir``: where the arm's pair pool is kept (a sweep shares one
    folder, so arms with the same pool key train on the same pairs)."""
    from anydoor.training.config import load_config

    def value(name):  # an empty string (a notebook parameter left blank) means "none"; so does pair_pool 0
        return None if params[name] == "" or (name == "pair_pool" and not params[name]) else params[name]

    overrides = [f"{key}={json.dumps(value(name))}" for name, key in TRAIN_KEYS.items() if name in params]
    overrides += [f"output_dir={json.dumps(str(output_dir))}", "wandb_project=null"]
    if pair_pool_dir is not None:
        overrides.append(f"pair_pool_dir={json.dumps(str(pair_pool_dir))}")
    return load_config(params.get("train_config", "configs/train_tiny.yaml"), overrides)


def train_arm(params: dict, run_dir: str | PathLike, sweep_dir: str | PathLike | None = None) -> Path:
    """Train the arm's model, or reuse it, and return its pipeline folder.

    A given ``checkpoint`` parameter skips training. In a sweep the model
    lives in ``<sweep_dir>/trained/<training key>/`` (shared by arms that
    differ only in evaluation) and ``<run_dir>/checkpoint`` links to it;
    otherwise it is trained into ``<run_dir>/checkpoint``. Training resumes
    from its latest complete checkpoint after an interruption.
    """
    from anydoor.training import train

    if params.get("checkpoint"):
        folder = Path(params["checkpoint"])
        if not (folder / "model_index.json").is_file():
            raise FileNotFoundError(f"checkpoint={str(folder)!r} is not an AnyDoorPipeline folder (no model_index.json)")
        return folder
    run_dir = Path(run_dir)
    if sweep_dir:
        train_dir = Path(sweep_dir) / "trained" / trained_model_key(params)
        link = run_dir / "checkpoint"
        if not link.exists():
            link.symlink_to(os.path.relpath(train_dir, run_dir))
    else:
        train_dir = run_dir / "checkpoint"
    pipeline_dir = train_dir / "pipeline"
    # Two runs sharing one trained model (parallel sweep jobs) train it once:
    # the second waits for the first, then finds its pipeline.
    with folder_lock(train_dir):
        if not (pipeline_dir / "model_index.json").is_file():
            pool_dir = Path(sweep_dir) / "pair_pool" if sweep_dir else None
            train(train_config_for(params, train_dir, pool_dir), resume="auto")  # max_steps 0: the untrained model
    return pipeline_dir


def load_arm_pipeline(pipeline_dir: str | PathLike):
    from anydoor import AnyDoorPipeline

    pipe = AnyDoorPipeline.from_pretrained(pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def evaluate_arm(pipe, params: dict, run_dir: str | PathLike) -> pd.DataFrame:
    """Evaluate on the benchmark; write results.parquet, summary.csv and samples/.

    The ``arm`` column holds the run id; reports name the arms per ablation
    from the sweep's index (one run can be an arm of several ablations)."""
    from eval.controls import benchmark_derangement
    from eval.runner import evaluate, write_results

    run_dir = Path(run_dir)
    reference_from = benchmark_derangement(params["benchmark"]) if params.get("wrong_reference") else None
    results = evaluate(
        pipe,
        params["benchmark"],
        seeds=list(params["seeds"]),
        num_inference_steps=int(params["num_inference_steps"]),
        guidance_scale=float(params["guidance_scale"]),
        shape_control=bool(params.get("shape_control", False)),
        reference_from=reference_from,
        arm=str(params.get("run_id", "arm")),
        metric_backbones=arm_metric_backbones(params),
        batch_size=int(params.get("eval_batch_size", 8)),
        save_images=run_dir / "samples",
        extra_columns={"train_seed": int(params.get("train_seed", 0)), "run_id": str(params.get("run_id", "arm"))},
    )
    write_results(results, run_dir)
    return results


def training_metrics(pipeline_dir: str | PathLike) -> pd.DataFrame:
    """The training log (metrics.jsonl beside the pipeline folder); empty if untrained."""
    path = Path(pipeline_dir).parent / "metrics.jsonl"
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_json(path, lines=True)


def log_arm_to_wandb(params: dict, run_dir: str | PathLike, results: pd.DataFrame, metrics: pd.DataFrame,
                     project: str = "anydoor-ablations") -> str | None:
    """One W&B run per arm run: id = the run hash with resume="allow" (a rerun
    continues it), group = the sweep, job_type "arm", tags = its ablations.
    Offline unless the user set WANDB_MODE. Returns the run's local folder."""
    import wandb

    run_dir = Path(run_dir)
    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(
        project=project,
        id=params.get("run_id"),
        resume="allow",
        group=params.get("sweep_name"),
        job_type="arm",
        tags=[t for t in str(params.get("tags", "")).split(",") if t],
        config={k: v for k, v in params.items() if k not in ("run_dir", "sweep_dir")},
        dir=str(run_dir),
        reinit="finish_previous",
    )
    try:
        for row in metrics.to_dict("records"):
            run.log({f"train/{k}": v for k, v in row.items() if k != "step" and pd.notna(v)}, step=int(row["step"]))
        numeric = results.select_dtypes("number").drop(columns=["seed", "train_seed"], errors="ignore")
        run.summary.update({f"eval/{k}": float(v) for k, v in numeric.mean().items() if pd.notna(v)})
        run.summary["eval/metric_source"] = str(results["metric_source"].iloc[0])
        table = wandb.Table(columns=["pair_id", "seed", "generated", "region"])
        for path in sorted((run_dir / "samples").glob("*_seed*.png"))[:16]:
            if path.stem.endswith("_region"):
                continue
            pair, seed = path.stem.rsplit("_seed", 1)
            region = path.with_name(path.stem + "_region.png")
            table.add_data(pair, int(seed), wandb.Image(str(path)), wandb.Image(str(region)) if region.exists() else None)
        run.log({"eval/samples": table})
        artifact = wandb.Artifact(f"results-{params.get('run_id', 'arm')}", type="results")
        artifact.add_file(str(run_dir / "results.parquet"))
        run.log_artifact(artifact)
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def mark_done(run_dir: str | PathLike, seconds: float | None = None) -> None:
    """DONE is written last, atomically: a run folder without it is redone."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{DONE}.tmp"
    tmp.write_text(json.dumps({"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": seconds}))
    os.replace(tmp, run_dir / DONE)
