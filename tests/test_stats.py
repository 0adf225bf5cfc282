"""Bootstrap intervals, paired comparisons and Holm's correction (eval/stats.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eval.stats import bootstrap_ci, bootstrap_means, compare, holm, sign_flip_pvalue, stable_seed, summarize


def test_stable_seed_is_deterministic_and_separates_parts():
    assert stable_seed("pair-0", 1) == stable_seed("pair-0", 1)
    assert 0 <= stable_seed("pair-0", 1) < 2**63
    seeds = {stable_seed("pair-0", 1), stable_seed("pair-0", 2), stable_seed("pair-01"), stable_seed("pair-1", 0)}
    assert len(seeds) == 4


def test_bootstrap_ci_contains_mean_narrows_and_is_deterministic():
    rng = np.random.default_rng(0)
    small, large = rng.normal(5.0, 1.0, 20), rng.normal(5.0, 1.0, 2000)
    low_s, high_s = bootstrap_ci(small, 1)
    low_l, high_l = bootstrap_ci(large, 1)
    assert low_s < small.mean() < high_s
    assert low_l < large.mean() < high_l
    assert high_l - low_l < 0.3 * (high_s - low_s)  # width ~ 1/sqrt(n): 10x more samples
    assert bootstrap_ci(small, 1) == bootstrap_ci(small, np.random.default_rng(1))
    assert bootstrap_ci(small, 1) != bootstrap_ci(small, 2)


def test_cluster_bootstrap_resamples_whole_pairs():
    # 10 pairs x 5 seeds, seeds of a pair identical: the information is 10 values, not 50.
    pair_means = np.random.default_rng(3).normal(0.0, 1.0, 10)
    values = np.repeat(pair_means, 5)
    pairs = np.repeat(np.arange(10), 5)
    clustered = bootstrap_means(values, 7, 500, clusters=pairs)
    on_pair_means = bootstrap_means(pair_means, 7, 500)
    np.testing.assert_allclose(clustered, on_pair_means)  # equal cluster sizes: the same statistic
    naive = bootstrap_ci(values, 7)
    cluster = bootstrap_ci(values, 7, clusters=pairs)
    assert cluster[1] - cluster[0] > 1.8 * (naive[1] - naive[0])  # sqrt(5) wider, up to noise


def test_crossed_bootstrap_adds_training_seed_variance():
    # 3 training seeds x 20 pairs: value = seed effect + pair effect.
    rng = np.random.default_rng(0)
    seed_effect, pair_effect = np.array([-3.0, 0.0, 3.0]), rng.normal(0.0, 0.5, 20)
    train_seed, pair = np.meshgrid(np.arange(3), np.arange(20), indexing="ij")
    values = (seed_effect[train_seed] + pair_effect[pair]).ravel()
    pairs_only = bootstrap_ci(values, 0, clusters=pair.ravel())
    crossed = bootstrap_ci(values, 0, clusters=[pair.ravel(), train_seed.ravel()])
    assert crossed[1] - crossed[0] > 3 * (pairs_only[1] - pairs_only[0])
    assert crossed[0] < values.mean() < crossed[1]


def test_bootstrap_refuses_bad_input():
    with pytest.raises(ValueError, match="values is empty"):
        bootstrap_ci([], 0)
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, np.nan], 0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci([1.0, 2.0], 0, level=95)
    with pytest.raises(TypeError, match="rng"):
        bootstrap_ci([1.0, 2.0], "seed")
    with pytest.raises(ValueError, match=r"clusters\[0\]"):
        bootstrap_ci([1.0, 2.0], 0, clusters=[0, 1, 2])


def test_holm_hand_computed():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    adjusted = holm([0.02, np.nan, 0.04])  # NaN does not count in m
    np.testing.assert_allclose(adjusted[[0, 2]], [0.04, 0.04])
    assert np.isnan(adjusted[1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.2, 1.5])


def test_sign_flip_pvalue_exact_hand_computed():
    # 3 positive pair differences: only all-plus and all-minus reach |mean| = 2 -> 2/8.
    assert sign_flip_pvalue([1.0, 2.0, 3.0]) == pytest.approx(0.25)
    # Seeds of a pair are averaged first: pairs a, b with means 1 and 3 -> 2 of 4 sign vectors.
    assert sign_flip_pvalue([0.0, 2.0, 3.0, 3.0], clusters=["a", "a", "b", "b"]) == pytest.approx(0.5)
    assert sign_flip_pvalue(np.zeros(5)) == 1.0


def _planted_frame(n_pairs: int = 20, seeds=(0, 1)) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    pair_level = rng.normal(60.0, 8.0, n_pairs)
    rows = []
    for p in range(n_pairs):
        for s in seeds:
            base = pair_level[p] + rng.normal(0.0, 1.0)
            for arm, value in (
                ("ref", base),
                ("better", base + 5.0 + rng.normal(0.0, 1.0)),  # planted +5
                ("same", base + rng.normal(0.0, 1.0)),  # null: no difference
            ):
                rows.append({"pair_id": f"p{p}", "seed": s, "arm": arm, "clip_i": value,
                             "metric_source": "real", "clip_backbone": "ViT-B-32/openai"})
    return pd.DataFrame(rows)


def test_compare_detects_planted_difference_and_not_null():
    table = compare(_planted_frame(), "ref", metrics=["clip_i"]).set_index("arm")
    better, same = table.loc["better"], table.loc["same"]
    assert better.ci_low < 5.0 < better.ci_high and better.mean_diff == pytest.approx(5.0, abs=0.6)
    assert better.significant and better.p_value < 0.001
    assert not same.significant and same.ci_low < 0.0 < same.ci_high
    assert better.n == 40 and better.n_pairs == 20 and better.label == "CLIP-I"
    # Holm across the two arms of this ablation
    np.testing.assert_allclose(table["p_holm"], holm(table["p_value"].to_numpy()))
    assert compare(_planted_frame(), "ref", metrics=["clip_i"]).equals(compare(_planted_frame(), "ref", metrics=["clip_i"]))


def test_compare_matches_a_baseline_to_every_training_seed():
    df = _planted_frame(n_pairs=6, seeds=(0,))
    arms = []
    for t in (0, 1):  # "better" trained twice; the baseline has no training seed
        arm = df[df.arm == "better"].copy()
        arm["train_seed"] = t
        arm["clip_i"] += t
        arms.append(arm)
    frame = pd.concat([df[df.arm == "ref"], *arms], ignore_index=True)
    row = compare(frame, "ref", metrics=["clip_i"]).iloc[0]
    assert row.n == 12 and row.n_pairs == 6
    ref = df[df.arm == "ref"].set_index("pair_id").clip_i
    expected = np.mean([(a.set_index("pair_id").clip_i - ref).mean() for a in arms])
    assert row.mean_diff == pytest.approx(expected)


def test_compare_refuses_unknown_reference_and_unmatched_arms():
    df = _planted_frame(n_pairs=3)
    with pytest.raises(ValueError, match="reference_arm 'nope'"):
        compare(df, "nope")
    other = df[df.arm == "better"].assign(pair_id=lambda d: d.pair_id + "x")
    with pytest.raises(ValueError, match="shares no"):
        compare(pd.concat([df[df.arm == "ref"], other]), "ref", metrics=["clip_i"])


def test_summarize_statistics_and_labels():
    df = pd.DataFrame({
        "arm": ["a"] * 4 + ["b"] * 4,
        "pair_id": ["p0", "p0", "p1", "p1"] * 2,
        "seed": [0, 1] * 4,
        "clip_i": [1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0],
        "psnr_mask": [np.nan] * 4 + [20.0, 22.0, 24.0, 26.0],
        "metric_source": "random",
        "clip_backbone": "random-ViT-B-32-tiny",
    })
    table = summarize(df, by="arm", metrics=["clip_i", "psnr_mask"])
    assert len(table) == 3  # arm a has no PSNR value: no row
    a = table[(table.arm == "a") & (table.metric == "clip_i")].iloc[0]
    assert a["mean"] == 2.5 and a["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert a["n"] == 4 and a["n_pairs"] == 2 and a.ci_low <= 2.5 <= a.ci_high
    # resampling the two pairs: the mean of p0 (1.5) and of p1 (3.5) bound the interval
    assert 1.5 <= a.ci_low and a.ci_high <= 3.5
    assert a.label == "CLIP-sim (random-init)" and a.metric_source == "random"
    psnr = table[(table.arm == "b") & (table.metric == "psnr_mask")].iloc[0]
    assert psnr.label == "PSNR in target mask (dB)" and pd.isna(psnr.metric_source)
    in_world = summarize(df.assign(metric_source="in-world"), by="arm", metrics=["clip_i"])
    assert (in_world.label == "CLIP-I (in-world)").all()
    with pytest.raises(ValueError, match="several sources"):
        summarize(df.assign(metric_source=["real", "in-world"] * 4), by="arm", metrics=["clip_i"])
    assert a.backbone == "random-ViT-B-32-tiny"
    assert summarize(df, by="arm").equals(summarize(df, by="arm"))
    mixed = df.assign(clip_backbone=["x", "y"] * 4)
    with pytest.raises(ValueError, match="several backbones"):
        summarize(mixed, by="arm")
    with pytest.raises(ValueError, match="lacks"):
        summarize(df, by=["arm", "nope"])


def test_minimum_detectable_difference_hand_computed():
    from eval.stats import minimum_detectable_difference

    # Pairs A (seeds 1, 3 -> mean 2), B (4), C (0, 0 -> 0): per-pair means 2, 4, 0, sd 2, n 3.
    # Two comparisons: a' = 0.025, z(0.9875) = 2.241403, z(0.8) = 0.841621; (3.083024) * 2 / sqrt(3).
    d = [1.0, 3.0, 4.0, 0.0, 0.0]
    pairs = ["A", "A", "B", "C", "C"]
    assert minimum_detectable_difference(d, pairs, comparisons=2) == pytest.approx(3.083024 * 2 / 3 ** 0.5, rel=1e-5)
    # One comparison: z(0.975) = 1.959964.
    assert minimum_detectable_difference(d, pairs) == pytest.approx((1.959964 + 0.841621) * 2 / 3 ** 0.5, rel=1e-5)
    assert np.isnan(minimum_detectable_difference([1.0, 2.0], ["A", "A"]))
    with pytest.raises(ValueError, match="comparisons must be a positive int"):
        minimum_detectable_difference(d, pairs, comparisons=0)


def test_gap_closed_known_answer():
    from eval.stats import gap_closed

    rng = np.random.default_rng(0)
    pairs = [f"p{i}" for i in range(12)]
    untrained = rng.normal(20, 5, 12)
    ceiling = untrained + rng.uniform(40, 60, 12)
    rows = lambda values: pd.DataFrame(  # noqa: E731
        {"pair_id": np.repeat(pairs, 2), "seed": np.tile([0, 1], 12), "dino_i": np.repeat(values, 2)})
    # The arm closes exactly 30% of every pair's gap: G = 0.3, and every resample agrees.
    out = gap_closed(rows(untrained + 0.3 * (ceiling - untrained)), rows(untrained), rows(ceiling))
    assert out["G"] == pytest.approx(0.3) and out["n_pairs"] == 12
    assert out["ci_low"] == pytest.approx(0.3) and out["ci_high"] == pytest.approx(0.3)
    # Seeds are averaged within a pair first: +-4 around the 30% point changes nothing.
    arm = rows(untrained + 0.3 * (ceiling - untrained))
    arm["dino_i"] += np.tile([4.0, -4.0], 12)
    noisy = gap_closed(arm, rows(untrained), rows(ceiling))
    assert noisy["G"] == pytest.approx(0.3) and noisy["ci_high"] == pytest.approx(0.3)
    # Pairs that close different shares: G is the ratio of the mean gains, the CI brackets it.
    shares = np.linspace(0.0, 0.6, 12)
    spread = gap_closed(rows(untrained + shares * (ceiling - untrained)), rows(untrained), rows(ceiling))
    expected = (shares * (ceiling - untrained)).mean() / (ceiling - untrained).mean()
    assert spread["G"] == pytest.approx(expected) and spread["ci_low"] < expected < spread["ci_high"]
    # The ceiling itself closes all of it; the untrained model none.
    assert gap_closed(rows(ceiling), rows(untrained), rows(ceiling))["G"] == pytest.approx(1.0)
    assert gap_closed(rows(untrained), rows(untrained), rows(ceiling))["G"] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="no gap to close"):
        gap_closed(rows(ceiling), rows(ceiling), rows(ceiling))
