"""Paired statistics for ablation tables (DESIGN.md section 2, "Confidence intervals").

Every arm of an ablation is evaluated on the same pairs, sample seeds and
initial noise (common random numbers), so arms are compared through paired
differences. The unit of resampling is the benchmark pair (sample seeds of
one pair are not independent draws of the benchmark), and, when an arm was
trained several times, the training seed too: pairs and training seeds are
crossed factors and are resampled independently (a two-way cluster
bootstrap). Significance across the arms of one ablation is called after a
Holm correction.

Randomness is explicit: every function takes a seed or a
`numpy.random.Generator`; the same seed gives the same interval.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd

from eval.metrics import METRIC_NAMES, metric_label

# Sign-flip tests enumerate all 2^P sign vectors up to this many pairs, and
# sample n_perm of them beyond it.
EXACT_SIGN_FLIP_MAX_PAIRS = 12


def stable_seed(*parts) -> int:
    """A 63-bit seed from the string forms of `parts` (SHA-256, unlike
    Python's salted `hash`): the same parts give the same seed on every
    machine and run, e.g. ``stable_seed(pair_id, seed)`` for the initial noise."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _as_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed, got {type(rng).__name__} {rng!r}")


def _check_values(values, name: str = "values") -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; drop them first")
    return array


def _check_level(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    return float(level)


def _factors(clusters, n: int) -> list[np.ndarray]:
    """None -> every value its own cluster; one label array -> one factor;
    a list/tuple of label arrays -> crossed factors (at most two)."""
    if clusters is None:
        return [np.arange(n)]
    if isinstance(clusters, (list, tuple)) and clusters and all(np.ndim(c) == 1 for c in clusters):
        factors = [np.asarray(c) for c in clusters]
    else:
        factors = [np.asarray(clusters)]
    if len(factors) > 2:
        raise ValueError(f"clusters may hold at most two crossed factors (pairs, training seeds), got {len(factors)}")
    for i, f in enumerate(factors):
        if f.shape != (n,):
            raise ValueError(f"clusters[{i}] must hold one label per value ({n}), got shape {f.shape}")
    # NaN is a label of its own (use_na_sentinel=False), never code -1.
    return [pd.factorize(f, use_na_sentinel=False)[0] for f in factors]


def bootstrap_means(values, rng=0, n_boot: int = 2000, clusters=None) -> np.ndarray:
    """Bootstrap distribution of the mean of `values` (n_boot draws).

    `clusters` None resamples values; one label array resamples clusters
    (all values of a drawn cluster come along, e.g. the sample seeds of a
    pair); two label arrays (pairs, training seeds) resample both crossed
    factors independently and keep the values in the drawn cells, with
    multiplicity. A draw whose cells are all empty (possible only with
    incomplete crossed designs) is NaN.
    """
    array = _check_values(values)
    rng = _as_rng(rng)
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    codes = _factors(clusters, array.size)
    sizes = [int(c.max()) + 1 for c in codes]
    sums = np.zeros(sizes)
    counts = np.zeros(sizes)
    np.add.at(sums, tuple(codes), array)
    np.add.at(counts, tuple(codes), 1.0)
    # Multinomial counts are the number of times each unit is drawn.
    weights = [rng.multinomial(k, np.full(k, 1.0 / k), size=n_boot).astype(np.float64) for k in sizes]
    if len(codes) == 1:
        num, den = weights[0] @ sums, weights[0] @ counts
    else:
        num = ((weights[0] @ sums) * weights[1]).sum(axis=1)
        den = ((weights[0] @ counts) * weights[1]).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2.0
    low, high = np.nanquantile(draws, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_ci(values, rng=0, n_boot: int = 2000, level: float = 0.95, clusters=None) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of `values`.

    Args:
        values: 1-D finite values (e.g. one metric, one row per (pair, seed)).
        rng: a `numpy.random.Generator` or an int seed.
        n_boot: bootstrap draws.
        level: coverage of the interval (0.95: the 2.5 % and 97.5 % quantiles).
        clusters: None (values are independent), one label per value (resample
            clusters, e.g. pair ids), or a list of two label arrays (pair ids
            and training seeds, resampled independently). See `bootstrap_means`.
    Returns:
        (low, high).
    """
    level = _check_level(level)
    return _percentile_interval(bootstrap_means(values, rng, n_boot, clusters), level)


def minimum_detectable_difference(differences, pair_ids, comparisons: int = 1, alpha: float = 0.05,
                                  power: float = 0.8) -> float:
    """The smallest paired difference a run could detect (issue 27): the minimum detectable effect
    MDE = (z(1 - a' / 2) + z(power)) * s_d / sqrt(n_pairs), where s_d is the standard deviation (ddof 1)
    of the per-pair mean differences (seeds averaged within a pair) and a' = alpha / `comparisons`
    (Bonferroni over the comparisons of a table). NaN with fewer than 2 pairs."""
    from statistics import NormalDist

    d = _check_values(differences, "differences")
    pair_ids = np.asarray(pair_ids)
    if pair_ids.shape != d.shape:
        raise ValueError(f"pair_ids has shape {pair_ids.shape}, differences {d.shape}")
    if isinstance(comparisons, bool) or not isinstance(comparisons, (int, np.integer)) or comparisons < 1:
        raise ValueError(f"comparisons must be a positive int, got {comparisons!r}")
    if not 0.0 < alpha < 1.0 or not 0.0 < power < 1.0:
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha!r}, {power!r}")
    per_pair = pd.Series(d).groupby(pair_ids).mean().to_numpy()
    if per_pair.size < 2:
        return float("nan")
    z = NormalDist().inv_cdf
    return float((z(1.0 - alpha / comparisons / 2.0) + z(power)) * per_pair.std(ddof=1) / np.sqrt(per_pair.size))


def gap_closed(arm: pd.DataFrame, untrained: pd.DataFrame, ceiling: pd.DataFrame, metric: str = "dino_i",
               rng=0, n_boot: int = 2000, level: float = 0.95) -> dict:
    """The share of the identity gap an arm closes (issue 30):
    G = (arm - untrained) / (ceiling - untrained), each term the mean over pairs of the per-pair mean
    (seeds averaged within a pair), with a percentile bootstrap CI that resamples pairs (the same
    resample for the three terms). `ceiling` is e.g. the fidelity ladder's VAE row. Pairs missing
    from any frame are left out; returns ``G``, ``ci_low``, ``ci_high``, ``n_pairs``."""
    frames = {"arm": arm, "untrained": untrained, "ceiling": ceiling}
    means = {}
    for name, frame in frames.items():
        _as_columns(["pair_id", metric], frame, f"{name} rows")
        means[name] = frame.groupby("pair_id")[metric].mean()
    pairs = sorted(set(means["arm"].index) & set(means["untrained"].index) & set(means["ceiling"].index), key=str)
    if len(pairs) < 2:
        raise ValueError(f"gap_closed needs at least 2 pairs present in all three frames, got {len(pairs)}")
    a, u, c = (means[name].loc[pairs].to_numpy(dtype=np.float64) for name in ("arm", "untrained", "ceiling"))
    if not (np.isfinite(a).all() and np.isfinite(u).all() and np.isfinite(c).all()):
        raise ValueError(f"{metric} holds NaN or infinite values; drop them first")
    gap = c.mean() - u.mean()
    if gap == 0:
        raise ValueError(f"the ceiling equals the untrained model on {metric}: no gap to close")
    rng = _as_rng(rng)
    idx = rng.integers(0, len(pairs), size=(n_boot, len(pairs)))
    with np.errstate(invalid="ignore", divide="ignore"):
        draws = (a[idx].mean(1) - u[idx].mean(1)) / (c[idx].mean(1) - u[idx].mean(1))
    low, high = _percentile_interval(draws[np.isfinite(draws)], _check_level(level))
    return {"G": float((a.mean() - u.mean()) / gap), "ci_low": low, "ci_high": high, "n_pairs": len(pairs)}


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order.

    The i-th smallest of m p-values becomes max_{j<=i} min(1, (m - j + 1) p_(j));
    calling adjusted p < alpha significant controls the family-wise error
    rate at alpha. NaN p-values stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be one-dimensional, got shape {p.shape}")
    valid = ~np.isnan(p)
    if ((p[valid] < 0) | (p[valid] > 1)).any():
        raise ValueError(f"pvalues must lie in [0, 1], got {p[valid][(p[valid] < 0) | (p[valid] > 1)].tolist()}")
    adjusted = np.full_like(p, np.nan)
    index = np.flatnonzero(valid)
    order = index[np.argsort(p[index], kind="stable")]
    m = order.size
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


def sign_flip_pvalue(differences, clusters=None, rng=0, n_perm: int = 10000) -> float:
    """Two-sided paired sign-flip permutation p-value for a zero mean difference.

    The differences are averaged per cluster (per pair: its sample seeds and
    training seeds), and under the null each pair's mean difference is as
    likely to be negative as positive. The statistic is the mean of the
    per-pair means. Up to `EXACT_SIGN_FLIP_MAX_PAIRS` pairs all sign vectors
    are enumerated (an exact p-value); beyond, `n_perm` random ones are drawn
    and p = (1 + hits) / (1 + n_perm).
    """
    d = _check_values(differences, "differences")
    codes = np.arange(d.size) if clusters is None else pd.factorize(np.asarray(clusters), use_na_sentinel=False)[0]
    if codes.shape != d.shape:
        raise ValueError(f"clusters must hold one label per difference ({d.size}), got shape {codes.shape}")
    per_pair = np.bincount(codes, weights=d) / np.bincount(codes)
    observed = abs(per_pair.mean())
    tolerance = 1e-12 * max(1.0, observed)
    n_pairs = per_pair.size
    if n_pairs <= EXACT_SIGN_FLIP_MAX_PAIRS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n_pairs)))
        return float(np.mean(np.abs(signs @ per_pair) / n_pairs >= observed - tolerance))
    rng = _as_rng(rng)
    signs = rng.choice((-1.0, 1.0), size=(n_perm, n_pairs))
    hits = int(np.sum(np.abs(signs @ per_pair) / n_pairs >= observed - tolerance))
    return (1 + hits) / (1 + n_perm)


# --------------------------------------------------------------------------- tables


def _as_columns(by, df: pd.DataFrame, name: str = "by") -> list[str]:
    columns = [by] if isinstance(by, str) else list(by)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{name} names columns {missing} that the frame lacks; columns: {list(df.columns)}")
    return columns


def _metrics(df: pd.DataFrame, metrics) -> list[str]:
    if metrics is None:
        return [m for m in METRIC_NAMES if m in df.columns]
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    missing = [m for m in metrics if m not in df.columns]
    if missing:
        raise ValueError(f"metrics {missing} are not columns of the frame; columns: {list(df.columns)}")
    return metrics


_BACKBONE_COLUMN = {"clip_i": "clip_backbone", "dino_i": "dino_backbone"}


def _provenance(rows: pd.DataFrame, metric: str, where: str) -> tuple[str | None, str | None]:
    """(metric_source, backbone) of a metric over rows (None, None for the backbone-free metrics);
    mixing backbones or sources is refused. Rows without a source column count as random."""
    column = _BACKBONE_COLUMN.get(metric)
    if column is None:
        return None, None
    backbones = rows[column].dropna().unique() if column in rows.columns else []
    if len(backbones) > 1:
        raise ValueError(f"{where}: {metric} was computed with several backbones {sorted(backbones)}; one table, one backbone")
    sources = rows["metric_source"].dropna().unique() if "metric_source" in rows.columns else ["random"]
    if len(sources) > 1:
        raise ValueError(f"{where}: {metric} was computed with backbones of several sources {sorted(sources)}")
    return (sources[0] if len(sources) else "random"), (backbones[0] if len(backbones) else None)


def _resampling_units(rows: pd.DataFrame) -> list[np.ndarray] | None:
    """Pairs, plus training seeds when there are several (crossed factors)."""
    units = []
    if "pair_id" in rows.columns:
        units.append(rows["pair_id"].to_numpy())
    if "train_seed" in rows.columns and rows["train_seed"].nunique(dropna=True) > 1:
        units.append(rows["train_seed"].to_numpy())
    return units or None


def _group_key(key) -> tuple:
    return key if isinstance(key, tuple) else (key,)


def summarize(
    df: pd.DataFrame,
    by: str | Sequence[str] = "arm",
    metrics: Sequence[str] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per group and metric: mean, std, n and a bootstrap CI of the mean.

    The bootstrap resamples pairs (column ``pair_id``) and, where a group
    holds several training seeds (column ``train_seed``), training seeds
    too. Each (group, metric) draws from its own generator seeded by
    `stable_seed(seed, group, metric)`, so adding an arm leaves the other
    rows unchanged. NaN values (e.g. PSNR on a benchmark without targets)
    are dropped; a metric with no value in a group gives no row.

    Returns one row per (group, metric): the `by` columns, ``metric``,
    ``label`` (`metric_label`: "CLIP-I" only for the real backbones),
    ``metric_source`` ("real", "in-world" or "random" for CLIP/DINO; None for the
    backbone-free PSNR, SSIM and diversity), ``backbone``, ``mean``, ``std`` (ddof 1), ``n`` (rows),
    ``n_pairs``, ``ci_low``, ``ci_high``, ``level``.
    """
    columns = _as_columns(by, df)
    metrics = _metrics(df, metrics)
    level = _check_level(level)
    records = []
    for key, group in df.groupby(columns, sort=True, dropna=False):
        key = _group_key(key)
        for metric in metrics:
            rows = group[group[metric].notna()]
            if rows.empty:
                continue
            source, backbone = _provenance(rows, metric, f"group {dict(zip(columns, key))}")
            values = rows[metric].to_numpy(dtype=np.float64)
            rng = np.random.default_rng(stable_seed(seed, *key, metric))
            low, high = bootstrap_ci(values, rng, n_boot, level, clusters=_resampling_units(rows))
            records.append({
                **dict(zip(columns, key)),
                "metric": metric,
                "label": metric_label(metric, source),
                "metric_source": source,
                "backbone": backbone,
                "mean": float(values.mean()),
                "std": float(values.std(ddof=1)) if values.size > 1 else float("nan"),
                "n": int(values.size),
                "n_pairs": int(rows["pair_id"].nunique()) if "pair_id" in rows.columns else int(values.size),
                "ci_low": low,
                "ci_high": high,
                "level": level,
            })
    return pd.DataFrame.from_records(records)


def _paired(arm_rows: pd.DataFrame, ref_rows: pd.DataFrame, metric: str, arm: str, reference_arm: str) -> pd.DataFrame:
    """Rows of one arm matched with the reference on (pair_id, seed[, train_seed])."""
    keys = ["pair_id", "seed"]
    train_seeds = [
        "train_seed" in rows.columns and rows["train_seed"].notna().any() for rows in (arm_rows, ref_rows)
    ]
    if all(train_seeds):
        keys.append("train_seed")

    def side(rows: pd.DataFrame) -> pd.DataFrame:
        extra = ["train_seed"] if "train_seed" in rows.columns and "train_seed" not in keys else []
        rows = rows[keys + extra + [metric]].dropna(subset=[metric])
        if rows.duplicated(subset=keys + extra).any():
            raise ValueError(f"rows repeat the keys {keys + extra}: one row per (pair_id, seed[, train_seed]) expected")
        return rows

    merged = side(arm_rows).merge(side(ref_rows), on=keys, suffixes=("", "_ref"))
    if merged.empty:
        raise ValueError(f"arm {arm!r} shares no (pair_id, seed) rows with the reference arm {reference_arm!r} for {metric}")
    merged["difference"] = merged[metric] - merged[f"{metric}_ref"]
    if "train_seed_ref" in merged.columns:
        # Only one side has training seeds: they are the arm's crossed factor.
        own = merged["train_seed"] if "train_seed" in merged.columns else np.nan
        merged["train_seed"] = merged["train_seed_ref"].where(pd.isna(own), own)
    return merged


def compare(
    df: pd.DataFrame,
    reference_arm: str,
    metrics: Sequence[str] | None = None,
    by: str = "arm",
    seed: int = 0,
    n_boot: int = 2000,
    level: float = 0.95,
    alpha: float = 0.05,
    n_perm: int = 10000,
) -> pd.DataFrame:
    """Paired differences of every arm against `reference_arm` (DESIGN.md section 2).

    Rows are matched on (pair_id, seed), plus train_seed when both arms have
    one (a baseline without training seeds is matched to every training seed
    of the arm). For each (arm, metric): the mean difference (arm minus
    reference), its cluster-bootstrap CI (pairs, and training seeds when
    several), a two-sided sign-flip p-value over pairs (`sign_flip_pvalue`),
    and Holm's adjustment across the arms of this frame for that metric:
    ``significant`` is ``p_holm < alpha``.

    Returns one row per (arm, metric): ``arm``, ``reference``, ``metric``,
    ``label``, ``n`` (matched rows), ``n_pairs``, ``mean_diff``, ``ci_low``,
    ``ci_high``, ``p_value``, ``p_holm``, ``significant``, ``mde`` (`minimum_detectable_difference`
    with a' = alpha / the number of arms compared).
    """
    _as_columns(by, df)
    _as_columns(["pair_id", "seed"], df, "compare's matching keys")
    level = _check_level(level)
    if reference_arm not in set(df[by]):
        raise ValueError(f"reference_arm {reference_arm!r} is not among the arms {sorted(map(str, df[by].unique()))}")
    metrics = _metrics(df, metrics)
    ref_rows = df[df[by] == reference_arm]
    arms = [a for a in sorted(df[by].unique(), key=str) if a != reference_arm]
    records = []
    for metric in metrics:
        for arm in arms:
            arm_rows = df[df[by] == arm]
            merged = _paired(arm_rows, ref_rows, metric, arm, reference_arm)
            source, _ = _provenance(pd.concat([arm_rows, ref_rows]), metric, f"arm {arm!r} vs {reference_arm!r}")
            d = merged["difference"].to_numpy(dtype=np.float64)
            rng = np.random.default_rng(stable_seed(seed, arm, reference_arm, metric))
            low, high = bootstrap_ci(d, rng, n_boot, level, clusters=_resampling_units(merged))
            records.append({
                "arm": arm,
                "reference": reference_arm,
                "metric": metric,
                "label": metric_label(metric, source),
                "n": int(d.size),
                "n_pairs": int(merged["pair_id"].nunique()),
                "mean_diff": float(d.mean()),
                "ci_low": low,
                "ci_high": high,
                "p_value": sign_flip_pvalue(d, merged["pair_id"].to_numpy(), rng, n_perm),
                # What this comparison could detect at 80% power, over the arms compared on this metric.
                "mde": minimum_detectable_difference(d, merged["pair_id"].to_numpy(), len(arms), alpha),
            })
    table = pd.DataFrame.from_records(records)
    if table.empty:
        return table
    table["p_holm"] = table.groupby("metric")["p_value"].transform(lambda p: holm(p.to_numpy()))
    table["significant"] = table["p_holm"] < alpha
    return table
