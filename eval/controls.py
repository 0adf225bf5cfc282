"""Negative controls: does a model use its reference? (issue 27)

The ``wrong-reference`` control evaluates a trained model with, for every
benchmark pair, *another* pair's reference (its ID tokens and its HF map),
and scores the composite, like every arm, against the pair's own reference.
A model that reads its reference loses identity here; one that paints the
scene's average object does not. Which other reference: a fixed-seed
derangement (no pair keeps its own) that gives each pair a reference of
another colour family wherever one exists, so the control is not rescued by
the colour family the metrics mostly see.
"""

from __future__ import annotations

import numpy as np

WRONG_REFERENCE_SEED = 0


def reference_colour_family(item: dict) -> str:
    """The colour family (`captions.colour_family`) of the median colour of a benchmark item's reference
    object pixels."""
    from anydoor.data.captions import colour_family

    pixels = item["object_image"][item["object_mask"]]
    if pixels.size == 0:
        raise ValueError(f"pair {item.get('pair_id')!r}: its reference mask is empty")
    return colour_family(np.median(pixels.reshape(-1, 3), axis=0))


def wrong_reference_derangement(families: dict[str, str], seed: int = WRONG_REFERENCE_SEED) -> dict[str, str]:
    """{pair_id: the pair_id whose reference it gets}: a derangement (no pair keeps its own) that
    maximises the number of pairs given another colour family, ties broken by a fixed-seed random
    order (an assignment problem: `scipy.optimize.linear_sum_assignment`).

    Args:
        families: {pair_id: colour family of its reference} (`reference_colour_family`).
        seed: the tie-breaking seed.
    """
    from scipy.optimize import linear_sum_assignment

    ids = sorted(families)
    if len(ids) < 2:
        raise ValueError(f"a wrong-reference derangement needs at least 2 pairs, got {len(ids)}")
    rng = np.random.default_rng(seed)
    family = np.array([families[i] for i in ids])
    # Cost: 1 for the same family, 0 for another; a large one for keeping one's own reference;
    # small random tie-breaks so the choice among equals is the seed's, not the pair order's.
    cost = (family[:, None] == family[None, :]).astype(np.float64) + rng.uniform(0.0, 1e-3, (len(ids), len(ids)))
    np.fill_diagonal(cost, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return {ids[r]: ids[c] for r, c in zip(rows, cols)}


def benchmark_derangement(benchmark, seed: int = WRONG_REFERENCE_SEED) -> dict[str, str]:
    """`wrong_reference_derangement` of a `BenchmarkSet` (or its folder)."""
    from eval.runner import _as_benchmark

    data = _as_benchmark(benchmark)
    families = {}
    for index in range(len(data)):
        item = data[index]
        families[item["pair_id"]] = reference_colour_family(item)
    return wrong_reference_derangement(families, seed)
