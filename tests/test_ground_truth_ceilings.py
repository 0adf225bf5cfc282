"""The ground-truth ceilings script (`benchmarks/ground_truth_ceilings.py`): its
ideal box-only sample draws the turn laws it names and reduces to copy-paste
when the turn is zero."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from anydoor.data.synthetic import BENCHMARK_TURN, VIDEO_TURN
from eval.crops import copy_paste

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "ground_truth_ceilings.py"
_spec = importlib.util.spec_from_file_location("ground_truth_ceilings", _PATH)
ceilings = importlib.util.module_from_spec(_spec)
sys.modules["ground_truth_ceilings"] = ceilings
_spec.loader.exec_module(ceilings)


def _item() -> dict:
    """An asymmetric object (an L: a bar with a block at one end, a marker on
    the block) and a scene with a placement box: what `BenchmarkSet` items hold."""
    rng = np.random.default_rng(0)
    image = np.full((40, 40, 3), 200, np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[12:28, 6:34] = True
    mask[4:12, 24:34] = True
    image[mask] = (30, 160, 40)
    image[14:26, 26:32] = (220, 20, 200)
    scene = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    placement = np.zeros((48, 48), bool)
    placement[10:38, 8:40] = True
    return {"object_image": image, "object_mask": mask, "scene_image": scene}, placement


@pytest.mark.parametrize("law", sorted(ceilings.TURN_LAWS))
def test_turn_laws_draw_their_ranges(law):
    draw = ceilings.TURN_LAWS[law]
    turns = np.array([draw(np.random.default_rng(seed)) for seed in range(400)])
    assert (turns > 0).any() and (turns < 0).any()  # either way
    if law.startswith("benchmark"):
        assert np.all((np.abs(turns) >= BENCHMARK_TURN[0]) & (np.abs(turns) <= BENCHMARK_TURN[1]))
    else:
        assert np.all(np.abs(turns) <= VIDEO_TURN)
        assert np.abs(turns).max() > 0.5 * VIDEO_TURN
    assert draw(np.random.default_rng(7)) == draw(np.random.default_rng(7))


def test_zero_turn_is_copy_paste():
    item, placement = _item()
    expected = copy_paste(item["object_image"], item["object_mask"], item["scene_image"], placement)
    np.testing.assert_array_equal(ceilings._turned_paste(item, 0.0, placement), expected)
    target = expected.copy()
    target[placement] = 255 - target[placement]
    ideal = ceilings._ideal_box_only_sample(item, target, placement, np.random.default_rng(0), lambda rng: 0.0)
    assert ideal == pytest.approx(ceilings._score(expected, target, placement))


def test_ideal_sample_averages_its_draws():
    item, placement = _item()
    target = ceilings._turned_paste(item, 90.0, placement)
    turns = iter([90.0, 0.0] * ceilings.IDEAL_DRAWS)
    ideal = ceilings._ideal_box_only_sample(item, target, placement, np.random.default_rng(0), lambda rng: next(turns))
    right = ceilings._score(target, target, placement)
    wrong = ceilings._score(ceilings._turned_paste(item, 0.0, placement), target, placement)
    assert right["ssim_mask"] == pytest.approx(1.0, abs=1e-3)
    assert ideal["ssim_mask"] == pytest.approx((right["ssim_mask"] + wrong["ssim_mask"]) / 2)
    assert wrong["ssim_mask"] < ideal["ssim_mask"] < right["ssim_mask"]


def test_silhouette_turn_reads_the_pose_from_the_placement_mask():
    item, box = _item()
    # The placement mask is the silhouette the object pastes with when turned 90 degrees.
    white = {**item, "object_image": np.full_like(item["object_image"], 255), "scene_image": np.zeros_like(item["scene_image"])}
    silhouette = ceilings._turned_paste(white, 90.0, box)[..., 0] > 0
    chosen = ceilings._silhouette_turn(item, silhouette)
    np.testing.assert_array_equal(chosen, ceilings._turned_paste(item, 90.0, silhouette))
    assert not np.array_equal(chosen, ceilings._turned_paste(item, 0.0, silhouette))


def test_ideal_comparisons_are_paired_differences():
    import pandas as pd

    pairs = [f"p{i}" for i in range(6)]
    psnr = np.linspace(10.0, 15.0, 6)
    frame = pd.concat([
        pd.DataFrame({"pair_id": pairs, "arm": "copy_paste", "psnr_mask": psnr, "ssim_mask": 0.2}),
        pd.DataFrame({"pair_id": pairs, "arm": "scene", "psnr_mask": psnr - 2.0, "ssim_mask": 0.3}),
        pd.DataFrame({"pair_id": pairs, "arm": "ideal_x", "psnr_mask": psnr + 1.0, "ssim_mask": 0.25}),
    ])
    lines = ceilings.format_ideal_comparisons(frame).splitlines()[2:]
    assert [line.split("|")[1:3] for line in lines] == [[" ideal_x ", " copy_paste "], [" ideal_x ", " scene "]]
    assert lines[0].split("|")[3].startswith(" +1.000 [+1.000, +1.000]")
    assert lines[1].split("|")[3].startswith(" +3.000 [+3.000, +3.000]")
    assert lines[1].split("|")[4].startswith(" -0.050 [-0.050, -0.050]")
