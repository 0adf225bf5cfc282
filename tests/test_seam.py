"""The seam metric (eval.seam): change of the scene around the placement box."""

import numpy as np
import pytest

from eval.seam import seam_error, seam_region


def _pair():
    rng = np.random.default_rng(0)
    scene = rng.integers(0, 200, size=(96, 96, 3), dtype=np.uint8)
    scene_mask = np.zeros((96, 96), bool)
    scene_mask[40:56, 36:60] = True
    obj = np.full((32, 32, 3), 200, np.uint8)
    obj_mask = np.zeros((32, 32), bool)
    obj_mask[8:24, 8:24] = True
    return scene, scene_mask, obj, obj_mask


def test_the_scene_and_changes_inside_the_box_have_no_seam():
    scene, scene_mask, obj, obj_mask = _pair()
    assert seam_error(scene, scene, obj, obj_mask, scene_mask) == 0.0
    inside = scene.copy()
    inside[41:55, 37:59] = 255  # inside the placement box (the expanded box holds it)
    assert seam_error(inside, scene, obj, obj_mask, scene_mask) == 0.0


def test_a_uniform_shift_around_the_box_is_measured_in_levels():
    scene, scene_mask, obj, obj_mask = _pair()
    shifted = scene + 10  # scene < 200: no overflow
    assert seam_error(shifted, scene, obj, obj_mask, scene_mask) == pytest.approx(10.0, abs=0.5)
    # Changes far outside the crop (box x1.1, crop x2.0) do not count.
    far = scene.copy()
    far[:8, :8] = 0
    assert seam_error(far, scene, obj, obj_mask, scene_mask) == 0.0
    _, ring = seam_region(obj, obj_mask, scene, scene_mask)
    assert ring.shape == (64, 64) and 0 < ring.mean() < 1


def test_bad_shapes_are_named():
    scene, scene_mask, obj, obj_mask = _pair()
    with pytest.raises(ValueError, match=r"composite has shape \(10, 10, 3\) but the scene has \(96, 96, 3\)"):
        seam_error(np.zeros((10, 10, 3), np.uint8), scene, obj, obj_mask, scene_mask)
