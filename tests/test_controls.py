"""The wrong-reference control (issue 27)."""

from __future__ import annotations

import numpy as np
import pytest

from anydoor.data.datasets import BenchmarkSet
from anydoor.data.synthetic import write_synthetic_dataset
from eval.controls import benchmark_derangement, reference_colour_family, wrong_reference_derangement


def _is_derangement(mapping: dict) -> bool:
    return sorted(mapping) == sorted(mapping.values()) and all(k != v for k, v in mapping.items())


def test_derangement_prefers_another_colour_family():
    families = {"a": "red", "b": "red", "c": "blue", "d": "green", "e": "red", "f": "teal"}
    mapping = wrong_reference_derangement(families, seed=0)
    assert _is_derangement(mapping)
    assert all(families[k] != families[v] for k, v in mapping.items())
    assert wrong_reference_derangement(families, seed=0) == mapping  # deterministic
    # Three reds among four: one red must get a red (only one non-red donor... is not enough).
    crowded = {"a": "red", "b": "red", "c": "red", "d": "blue"}
    mapping = wrong_reference_derangement(crowded, seed=1)
    assert _is_derangement(mapping)
    assert sum(crowded[k] != crowded[v] for k, v in mapping.items()) == 2  # the best possible: d gives, d takes
    # One family only: still a derangement.
    assert _is_derangement(wrong_reference_derangement({"a": "red", "b": "red", "c": "red"}, seed=2))
    with pytest.raises(ValueError, match="at least 2 pairs"):
        wrong_reference_derangement({"a": "red"})


def test_seeds_break_ties_differently():
    families = {f"p{i}": ("red", "blue")[i % 2] for i in range(10)}
    maps = {tuple(sorted(wrong_reference_derangement(families, seed=s).items())) for s in range(5)}
    assert len(maps) > 1
    for m in maps:
        assert all(families[k] != families[v] for k, v in m)


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory):
    root = tmp_path_factory.mktemp("controls") / "data"
    write_synthetic_dataset(root, videos=1, frames=2, images=1, benchmark_pairs=4, seed=11)
    return BenchmarkSet(root / "benchmark")


def test_benchmark_derangement_and_runner(benchmark):
    from anydoor.data.captions import COLOUR_FAMILIES
    from anydoor.presets import tiny_pipeline
    from eval.backbones import load_backbones
    from eval.runner import evaluate

    mapping = benchmark_derangement(benchmark)
    assert _is_derangement(mapping) and len(mapping) == 4
    assert reference_colour_family(benchmark[0]) in COLOUR_FAMILIES
    pipe = tiny_pipeline(seed=0)
    backbones = load_backbones(metric_backbones="random")
    kwargs = dict(seeds=[0], num_inference_steps=2, guidance_scale=1.0, backbones=backbones, progress=False)
    own = evaluate(pipe, benchmark, **kwargs)
    wrong = evaluate(pipe, benchmark, reference_from=mapping, **kwargs)
    assert not own["wrong_reference"].any() and wrong["wrong_reference"].all()
    # Generated with other references, scored against their own: the generations differ.
    assert not np.allclose(own["clip_i"], wrong["clip_i"])
    with pytest.raises(ValueError, match="gives no reference for pairs"):
        evaluate(pipe, benchmark, reference_from={k: v for k, v in list(mapping.items())[:2]}, **kwargs)
    with pytest.raises(ValueError, match="not in the benchmark"):
        evaluate(pipe, benchmark, reference_from={**mapping, "nope": "pair0000"}, **kwargs)
