import numpy as np
import pytest

from anydoor.data.detail_maps import DETAIL_MAP_NAMES, detail_map
from anydoor.data.high_frequency import high_frequency_map


def _reference(h=32, w=40, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), bool)
    mask[4 : h - 6, 8 : w - 3] = True
    image[~mask] = 255  # background removed, as the pair code does
    return image, mask


@pytest.mark.parametrize("name", DETAIL_MAP_NAMES)
def test_every_variant_keeps_shape_and_dtype(name):
    image, mask = _reference()
    out = detail_map(name, image, mask, np.random.default_rng(0))
    assert out.shape == image.shape and out.dtype == np.uint8


def test_names():
    assert DETAIL_MAP_NAMES == ("hf", "rgb", "noise", "shuffle", "none")


def test_none_is_black_rgb_is_the_input_hf_is_the_map():
    image, mask = _reference()
    assert not detail_map("none", image, mask).any()
    np.testing.assert_array_equal(detail_map("rgb", image, mask), image)
    np.testing.assert_array_equal(detail_map("hf", image, mask), high_frequency_map(image, mask))


def test_noise_formula_inside_mask_only():
    image, mask = _reference()
    out = detail_map("noise", image, mask, np.random.default_rng(7))
    np.testing.assert_array_equal(out[~mask], image[~mask])
    e = np.random.default_rng(7).standard_normal(image.shape, dtype=np.float32)
    x = image.astype(np.float32) / 127.5 - 1.0
    expected = np.round((np.clip(x * 0.958 + e * 0.287, -1, 1) + 1) * 127.5)
    np.testing.assert_array_equal(out[mask], expected[mask])
    assert (out[mask] != image[mask]).mean() > 0.9


def test_noise_and_shuffle_are_deterministic_per_seed():
    image, mask = _reference()
    for name in ("noise", "shuffle"):
        a = detail_map(name, image, mask, np.random.default_rng(3))
        b = detail_map(name, image, mask, np.random.default_rng(3))
        c = detail_map(name, image, mask, np.random.default_rng(4))
        np.testing.assert_array_equal(a, b)
        assert (a != c).any()


def _patches(image, ph, pw):
    return [image[i * ph : (i + 1) * ph, j * pw : (j + 1) * pw] for i in range(4) for j in range(4)]


@pytest.mark.parametrize("hw", [(32, 40), (34, 43)])
def test_shuffle_permutes_the_sixteen_patches(hw):
    image = np.random.default_rng(1).integers(0, 256, hw + (3,), dtype=np.uint8)
    mask = np.ones(hw, bool)
    out = detail_map("shuffle", image, mask, np.random.default_rng(0))
    assert sorted(out.reshape(-1, 3).tolist()) == sorted(image.reshape(-1, 3).tolist())
    ph, pw = hw[0] // 4, hw[1] // 4
    source = [p.tobytes() for p in _patches(image, ph, pw)]
    moved = [p.tobytes() for p in _patches(out, ph, pw)]
    assert sorted(moved) == sorted(source) and moved != source
    # leftover rows/columns (sides not divisible by 4) stay where they were
    np.testing.assert_array_equal(out[4 * ph :], image[4 * ph :])
    np.testing.assert_array_equal(out[:, 4 * pw :], image[:, 4 * pw :])


def test_errors():
    image, mask = _reference()
    with pytest.raises(ValueError, match="hf, rgb, noise, shuffle, none"):
        detail_map("edges", image, mask)
    for name in ("noise", "shuffle"):
        with pytest.raises(ValueError, match="Generator"):
            detail_map(name, image, mask)
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        detail_map("noise", image, mask, rng=0)
    with pytest.raises(ValueError, match="sizes differ"):
        detail_map("rgb", image, mask[:-1])
    with pytest.raises(ValueError, match="too small"):
        detail_map("shuffle", image[:3], mask[:3] | True, np.random.default_rng(0))
