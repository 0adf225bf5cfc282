"""What a sweep supports and what it cannot: the report's headline and summary table (issue 27).

Both are generated from the paired comparisons (`eval.stats.compare`: difference, 95% CI,
Holm-adjusted p, MDE at 80% power), never written by hand:

- the **learning bar**: the full method beats the untrained model of the same preset and the
  unchanged scene on DINO-I, CLIP-I and PSNR in the object mask, Holm-significant;
- the **control**: the full method beats the ``wrong-reference`` row on DINO-I and CLIP-I;
- each ablation's **verdict** per arm, or "could not detect less than X" from the MDEs;
- **AnyDoor-world**'s bar (issue 28): the long-trained reference row beats the full method on DINO-I
  and PSNR in the mask, and its seam (`eval.seam`, lower is better) against the full method's.

Differences are read as reference arm (the full method) minus the other row; a bar that is not
met reads "not met: difference [CI], MDE X".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from eval.metrics import metric_label

ALPHA = 0.05
LEARNING_METRICS = ("dino_i", "clip_i", "psnr_mask")
CONTROL_METRICS = ("dino_i", "clip_i")
CONTROL_ARM = "wrong-reference"
LONG_TRAINED_ARM = "anydoor-world"  # the shipped long-trained full method (issue 28), evaluation only
LONG_TRAINED_METRICS = ("dino_i", "psnr_mask")
SCENE = "scene"
VERDICT_METRICS = ("dino_i", "clip_i", "psnr_mask", "ssim_mask")


def _oriented(row: pd.Series) -> tuple[float, float, float]:
    """(reference - other, CI low, CI high) from a `compare` row (other - reference)."""
    return -float(row["mean_diff"]), -float(row["ci_high"]), -float(row["ci_low"])


def verdict(row: pd.Series, reference: str, alpha: float = ALPHA) -> str:
    """"<reference> better", "<arm> better" or "no detectable difference" for one comparison row."""
    diff, low, high = _oriented(row)
    if row["p_holm"] < alpha and low > 0:
        return f"{reference} better"
    if row["p_holm"] < alpha and high < 0:
        return f"{row['arm']} better"
    return "no detectable difference"


def _cell(row: pd.Series) -> str:
    diff, low, high = _oriented(row)
    digits = 3 if max(abs(low), abs(high)) < 1 else 2
    return f"{diff:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def _mde(row: pd.Series) -> str:
    value = row.get("mde", np.nan)
    return f"{value:.3g}" if np.isfinite(value) else "-"


def summary_table(comparisons: dict[str, tuple[str, pd.DataFrame]], metrics=VERDICT_METRICS) -> pd.DataFrame:
    """One row per (ablation, comparison, metric): ablation, comparison ("ref - arm"), metric,
    difference [95% CI], p_holm, MDE, verdict.

    Args:
        comparisons: {ablation: (its reference arm, its `compare` frame)}.
    """
    rows = []
    for ablation, (reference, frame) in comparisons.items():
        if frame is None or frame.empty:
            continue
        frame = frame[frame["metric"].isin(metrics)]
        # Grouped by comparison, the metrics in `metrics` order within each.
        order = {arm: i for i, arm in enumerate(dict.fromkeys(frame["arm"]))}
        rank = {m: i for i, m in enumerate(metrics)}
        frame = frame.assign(_a=frame["arm"].map(order), _m=frame["metric"].map(rank)).sort_values(["_a", "_m"])
        for _, r in frame.iterrows():
            rows.append({
                "ablation": ablation,
                "comparison": f"{reference} - {r['arm']}",
                "metric": r.get("label") or metric_label(r["metric"]),
                "difference [95% CI]": _cell(r),
                "p_holm": f"{r['p_holm']:.3g}",
                "MDE": _mde(r),
                "verdict": verdict(r, reference),
            })
    return pd.DataFrame(rows, columns=["ablation", "comparison", "metric", "difference [95% CI]", "p_holm", "MDE",
                                       "verdict"])


def _check(frame: pd.DataFrame, arm: str, metric: str, winner: str, reference: str, alpha: float,
           cell=None) -> tuple[bool, str]:
    """(met, "<label>: met|not met: <cell>[, MDE X]") for one (arm, metric) row of a `compare` frame:
    met when it is significant in `winner`'s favour; (False, "<metric>: not measured") without the row."""
    hit = frame[(frame["arm"] == arm) & (frame["metric"] == metric)]
    if hit.empty:
        return False, f"{metric}: not measured"
    r = hit.iloc[0]
    ok = verdict(r, reference, alpha) == f"{winner} better"
    return ok, (f"{r.get('label') or metric_label(metric)}: {'met' if ok else 'not met'}: {(cell or _cell)(r)}"
                + ("" if ok else f", MDE {_mde(r)}"))


def _bar(frame: pd.DataFrame, reference: str, others: list[str], metrics, alpha: float) -> tuple[bool, list[str]]:
    """(met, one phrase per (other, metric)): met when every comparison is significant in the reference's favour."""
    checks = [(other, _check(frame, other, metric, reference, reference, alpha)) for other in others for metric in metrics]
    return all(ok for _, (ok, _) in checks), [f"vs {other} on {phrase}" for other, (_, phrase) in checks]


def _long_trained_line(frame: pd.DataFrame, reference: str, alpha: float) -> str:
    """AnyDoor-world against the full method: its bar (DINO-I, PSNR) and the seam, as arm - reference."""
    checks = [_check(frame, LONG_TRAINED_ARM, metric, LONG_TRAINED_ARM, reference, alpha, _forward_cell)
              for metric in LONG_TRAINED_METRICS]
    met, phrases = all(ok for ok, _ in checks), [phrase for _, phrase in checks]
    seam = frame[(frame["arm"] == LONG_TRAINED_ARM) & (frame["metric"] == "seam")]
    if not seam.empty:
        r = seam.iloc[0]
        lower = r["p_holm"] < alpha and r["ci_high"] < 0
        phrases.append(f"seam (lower is better) {_forward_cell(r)}: {'lower' if lower else 'not detectably lower'}")
    return (f"Long training ({LONG_TRAINED_ARM} minus {reference}, on DINO-I and PSNR in the mask, "
            f"Holm-significant): {'MET' if met else 'NOT MET'}. " + "; ".join(phrases) + ".")


def _forward_cell(row: pd.Series) -> str:
    """arm - reference [CI], as `compare` gives it."""
    low, high = float(row["ci_low"]), float(row["ci_high"])
    digits = 3 if max(abs(low), abs(high)) < 1 else 2
    return f"{float(row['mean_diff']):+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def headline(comparisons: dict[str, tuple[str, pd.DataFrame]], untrained: list[str], full_ablation: str,
             alpha: float = ALPHA, own_arms: dict[str, list[str]] | None = None) -> list[str]:
    """Plain sentences: the learning bar, the control, each ablation's verdicts.

    Args:
        comparisons: {ablation: (reference arm, `compare` frame)}; the learning bar and the control are read
            from `full_ablation`'s frame (the reference rows: the full method against the untrained model,
            the wrong-reference control and the baselines).
        untrained: the untrained arms' names.
        own_arms: {ablation: its own arms}: the verdicts cover these only, not the reference rows and
            baselines shown beside every ablation (default: every compared row but those).
    """
    lines = []
    reference, frame = comparisons.get(full_ablation, (None, None))
    if frame is not None and not frame.empty:
        others = [a for a in untrained if a in set(frame["arm"])] + ([SCENE] if SCENE in set(frame["arm"]) else [])
        if others:
            met, phrases = _bar(frame, reference, others, LEARNING_METRICS, alpha)
            lines.append(f"Learning bar ({reference} beats {' and '.join(others)} on DINO-I, CLIP-I and PSNR in the "
                         f"mask, Holm-significant): {'MET' if met else 'NOT MET'}. " + "; ".join(phrases) + ".")
        if CONTROL_ARM in set(frame["arm"]):
            met, phrases = _bar(frame, reference, [CONTROL_ARM], CONTROL_METRICS, alpha)
            lines.append(f"The model uses its reference ({reference} beats {CONTROL_ARM}): "
                         f"{'MET' if met else 'NOT MET'}. " + "; ".join(phrases) + ".")
        if LONG_TRAINED_ARM in set(frame["arm"]):
            lines.append(_long_trained_line(frame, reference, alpha))
    else:
        lines.append("No learning bar: the sweep has no reference rows with finished runs.")
    for ablation, (ref, cmp) in comparisons.items():
        if ablation == full_ablation or cmp is None or cmp.empty:
            continue
        arms = [a for a in dict.fromkeys(cmp["arm"])
                if (a in own_arms[ablation] if own_arms and ablation in own_arms
                    else a not in untrained and a not in (SCENE, CONTROL_ARM, LONG_TRAINED_ARM))]
        parts = []
        for arm in arms:
            rows = cmp[(cmp["arm"] == arm) & cmp["metric"].isin(VERDICT_METRICS)]
            found = [f"{r['label']}: {verdict(r, ref, alpha)} ({_cell(r)})" for _, r in rows.iterrows()
                     if verdict(r, ref, alpha) != "no detectable difference"]
            if found:
                parts.append(f"{arm}: " + "; ".join(found))
            else:
                mdes = ", ".join(f"{r['label']} {_mde(r)}" for _, r in rows.iterrows() if r["metric"] != "ssim_mask")
                parts.append(f"{arm}: no difference detected; could not detect less than {mdes}")
        if parts:
            lines.append(f"{ablation} (reference {ref}): " + " | ".join(parts) + ".")
    return lines
