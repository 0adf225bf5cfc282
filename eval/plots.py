"""Matplotlib figures shared by the notebooks and the report.

Each function returns a `matplotlib.figure.Figure` (the caller shows or
saves it); none reads or writes files except `sample_grid`, which reads the
saved sample PNGs of the run folders.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import PIL.Image  # noqa: E402


def loss_curves(curves: dict[str, pd.DataFrame], smooth: int = 5):
    """Training loss per step, one line per arm (moving average of `smooth` logs)."""
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    for arm, df in curves.items():
        if df.empty or "loss" not in df:
            continue
        loss = df["loss"].rolling(smooth, min_periods=1).mean()
        ax.plot(df["step"], loss, label=arm, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (eps MSE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def metric_bars(summary: pd.DataFrame, arms: list[str], metrics: list[str], title: str = ""):
    """Mean per arm with 95% CI error bars, one panel per metric."""
    metrics = [m for m in metrics if m in set(summary["metric"])]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(3.1 * max(len(metrics), 1), 3.2), dpi=110, squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = summary[summary["metric"] == metric].set_index("arm")
        present = [a for a in arms if a in rows.index]
        means = rows.loc[present, "mean"].to_numpy()
        err = np.stack([means - rows.loc[present, "ci_low"].to_numpy(), rows.loc[present, "ci_high"].to_numpy() - means])
        ax.bar(range(len(present)), means, yerr=err, capsize=3, color="#4c72b0", alpha=0.85)
        ax.set_xticks(range(len(present)), present, rotation=45, ha="right", fontsize=7)
        ax.set_title(rows["label"].iloc[0], fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        low = np.nanmin(rows.loc[present, "ci_low"].to_numpy())
        high = np.nanmax(rows.loc[present, "ci_high"].to_numpy())
        pad = 0.15 * (high - low + 1e-9)
        ax.set_ylim(max(low - pad, 0) if low >= 0 else low - pad, high + pad)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def sample_grid(columns: list[tuple[str, np.ndarray | str | Path | None]], cell: int = 128):
    """One row of images with titles: reference | scene | each arm's result."""
    fig, axes = plt.subplots(1, len(columns), figsize=(1.5 * len(columns), 1.9), dpi=110, squeeze=False)
    for ax, (title, image) in zip(axes[0], columns):
        ax.axis("off")
        ax.set_title(title, fontsize=7)
        if image is None:
            continue
        if isinstance(image, (str, Path)):
            image = np.asarray(PIL.Image.open(image).convert("RGB"))
        ax.imshow(image, interpolation="nearest")
    fig.tight_layout()
    return fig


def ablation_sample_grid(sweep_dir, ablation, benchmark, pair_index: int = 0, seed: int = 0):
    """Reference | scene | target | each arm's composite for one pair and seed
    (the same pair and initial noise across arms: common random numbers)."""
    from anydoor.data.datasets import BenchmarkSet
    from eval.runner import _safe_name

    bench = BenchmarkSet(benchmark)
    item = bench[pair_index % len(bench)]
    name = f"{_safe_name(item['pair_id'])}_seed{seed}.png"
    reference = np.where(item["object_mask"][..., None], item["object_image"], 255).astype(np.uint8)
    columns = [("reference", reference), ("scene", item["scene_image"])]
    if item.get("target_image") is not None:
        columns.append(("true target", item["target_image"]))
    sweep_dir = Path(sweep_dir)
    for arm in ablation.all_arms:
        rows = ablation.results[ablation.results["arm"] == arm]
        if rows.empty or arm == "scene":  # the unchanged-scene baseline is the scene column already
            continue
        if arm in ablation.baseline_arms:
            path = sweep_dir / "baselines" / arm / name
        else:
            path = sweep_dir / "runs" / rows["run_id"].iloc[0] / "samples" / name
        columns.append((arm, path if path.is_file() else None))
    return sample_grid(columns)
