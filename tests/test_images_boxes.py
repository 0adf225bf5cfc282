import numpy as np
import PIL.Image
import pytest
import torch

from anydoor.data.boxes import (
    box_area_ratio,
    box_in_box,
    box_mask,
    check_box,
    clip_box,
    expand_box,
    mask_box,
    pad_to_square,
    square_box,
)
from anydoor.data.images import as_binary_mask, as_rgb_uint8, load_rgba_object


def _rgb(h=4, w=5, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ---------------------------------------------------------------- as_rgb_uint8


def test_rgb_uint8_is_copied_unchanged():
    image = _rgb()
    out = as_rgb_uint8(image)
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


def test_pil_modes():
    assert PIL.Image.fromarray(np.zeros((2, 2), np.uint8)).mode == "L"
    assert _palette_mask(np.eye(2, dtype=bool)).mode == "P"


def test_grayscale_and_single_channel_repeat_to_rgb():
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5)
    for image in (gray, gray[:, :, None], PIL.Image.fromarray(gray)):
        out = as_rgb_uint8(image)
        assert out.shape == (4, 5, 3)
        np.testing.assert_array_equal(out[:, :, 2], gray)


def test_rgba_drops_alpha_numpy_and_pil():
    rgba = np.dstack([_rgb(), np.zeros((4, 5), np.uint8)])
    np.testing.assert_array_equal(as_rgb_uint8(rgba), rgba[:, :, :3])
    np.testing.assert_array_equal(as_rgb_uint8(PIL.Image.fromarray(rgba)), rgba[:, :, :3])


def test_torch_chw_and_hwc_and_float_scaling():
    image = _rgb(6, 7)
    chw = torch.from_numpy(image).permute(2, 0, 1)
    np.testing.assert_array_equal(as_rgb_uint8(chw), image)
    np.testing.assert_array_equal(as_rgb_uint8(torch.from_numpy(image)), image)
    floats = np.array([[[0.0, 0.2, 1.0]]], dtype=np.float32)
    assert as_rgb_uint8(floats).tolist() == [[[0, 51, 255]]]


@pytest.mark.parametrize(
    "image, error, words",
    [
        (np.zeros((4, 5, 3), np.uint16), TypeError, "uint16"),
        (np.zeros((4, 5), bool), TypeError, "bool"),
        (np.full((4, 5, 3), -1.0, np.float32), ValueError, "[-1, -1]"),
        (np.linspace(0, 255, 60).reshape(4, 5, 3), ValueError, "[0, 255]"),
        (np.full((2, 2, 3), np.nan), ValueError, "NaN"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "empty"),
        (np.zeros((2, 4, 5, 3), np.uint8), ValueError, "shape"),
        (np.zeros((4, 5, 2), np.uint8), ValueError, "channels"),
        ([[1, 2], [3, 4]], TypeError, "list"),
    ],
)
def test_as_rgb_uint8_refuses(image, error, words):
    with pytest.raises(error, match="my_image") as info:
        as_rgb_uint8(image, "my_image")
    assert words in str(info.value)


# ---------------------------------------------------------------- as_binary_mask


def _palette_mask(mask):
    """A 'P' mode PNG mask, as video segmentation sets store them: values are labels."""
    image = PIL.Image.frombytes("P", mask.shape[::-1], mask.astype(np.uint8).tobytes())
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    return image


def test_binary_mask_accepts_encodings():
    expected = np.array([[0, 1, 1], [0, 0, 1]], dtype=bool)
    encodings = [
        expected,
        expected.astype(np.int64),
        expected.astype(np.uint8) * 255,
        expected.astype(np.float32),
        expected[:, :, None].astype(np.uint8),
        torch.from_numpy(expected)[None],
        PIL.Image.fromarray(expected.astype(np.uint8) * 255),
        PIL.Image.fromarray(expected.astype(np.uint8) * 255).convert("1"),
        _palette_mask(expected),
    ]
    for mask in encodings:
        out = as_binary_mask(mask)
        assert out.dtype == bool
        np.testing.assert_array_equal(out, expected)


def test_full_mask_is_allowed():
    assert as_binary_mask(np.ones((3, 3), np.uint8)).all()
    assert as_binary_mask(np.full((3, 3), 255, np.uint8)).all()


@pytest.mark.parametrize(
    "mask, words",
    [
        (np.arange(256, dtype=np.uint8).reshape(16, 16), "not binary"),
        (np.array([[0.0, 0.5], [1.0, 1.0]]), "0.5"),
        (np.array([[0, 1], [255, 1]], np.uint8), "255"),
        (np.zeros((3, 3), bool), "empty"),
        (np.ones((2, 3, 3), bool), "shape"),
    ],
)
def test_binary_mask_refuses(mask, words):
    with pytest.raises(ValueError, match="the_mask") as info:
        as_binary_mask(mask, "the_mask")
    assert words in str(info.value)


def test_binary_mask_size_mismatch_message():
    with pytest.raises(ValueError, match=r"mask and image sizes differ: ref_mask \(2, 3\) vs image \(4, 5\)"):
        as_binary_mask(np.ones((2, 3), bool), "ref_mask", shape=(4, 5))


# ---------------------------------------------------------------- load_rgba_object


def test_load_rgba_object_from_path_and_pil(tmp_path):
    rgba = np.dstack([_rgb(), np.zeros((4, 5), np.uint8)])
    rgba[1:3, 2:4, 3] = 200
    rgba[0, 0, 3] = 127  # just under the threshold
    path = tmp_path / "object.png"
    PIL.Image.fromarray(rgba).save(path)
    for source in (path, str(path), PIL.Image.fromarray(rgba), rgba):
        rgb, mask = load_rgba_object(source)
        np.testing.assert_array_equal(rgb, rgba[:, :, :3])
        np.testing.assert_array_equal(mask, rgba[:, :, 3] >= 128)


def test_load_rgba_object_refuses_rgb_and_empty_alpha():
    with pytest.raises(ValueError, match="RGBA"):
        load_rgba_object(PIL.Image.fromarray(_rgb()))
    with pytest.raises(ValueError, match="empty alpha"):
        load_rgba_object(np.dstack([_rgb(), np.full((4, 5), 100, np.uint8)]))


# ---------------------------------------------------------------- boxes


def test_mask_box_is_half_open():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:7] = True
    assert mask_box(mask) == (3, 2, 7, 5)
    with pytest.raises(ValueError, match="empty"):
        mask_box(np.zeros((4, 4), bool))


def test_expand_box_by_hand():
    # w 10 -> 15 (2 px left, 3 right), h 20 -> 30 (5 px up, 5 down)
    assert expand_box((10, 10, 20, 30), 1.5) == (8, 5, 23, 35)
    assert expand_box((10, 10, 20, 30), 1.5, (32, 22)) == (8, 5, 22, 32)


def test_expand_box_contains_original_for_ratio_at_least_one():
    rng = np.random.default_rng(0)
    for _ in range(200):
        x0, y0 = rng.integers(0, 50, 2)
        box = (int(x0), int(y0), int(x0 + rng.integers(1, 40)), int(y0 + rng.integers(1, 40)))
        ex = expand_box(box, rng.uniform(1.0, 3.0))
        assert ex[0] <= box[0] and ex[1] <= box[1] and ex[2] >= box[2] and ex[3] >= box[3]


def test_square_box_by_hand_and_clipped():
    assert square_box((10, 10, 20, 30)) == (5, 10, 25, 30)
    assert square_box((0, 0, 4, 10), (10, 10)) == (0, 0, 7, 10)  # (-3, 0, 7, 10) clipped


def test_box_area_ratio_and_box_in_box_and_box_mask():
    assert box_area_ratio((0, 0, 5, 10), (10, 10)) == 0.5
    assert box_in_box((5, 6, 8, 9), (2, 3, 10, 10)) == (3, 3, 6, 6)
    with pytest.raises(ValueError, match="not inside"):
        box_in_box((0, 6, 8, 9), (2, 3, 10, 10))
    mask = box_mask((1, 2, 3, 4), (5, 5))
    assert mask.sum() == 4 and mask[2:4, 1:3].all()


def test_degenerate_boxes_name_box_and_image_size():
    with pytest.raises(ValueError, match=r"\(20, 20, 30, 30\).*\(10, 10\)"):
        clip_box((20, 20, 30, 30), (10, 10))
    with pytest.raises(ValueError, match="empty"):
        check_box((5, 5, 5, 9))
    with pytest.raises(TypeError, match="integers"):
        check_box((0, 0, 1.5, 2))
    with pytest.raises(TypeError, match="4 integers"):
        check_box((0, 0, 1))


def test_pad_to_square_is_centred():
    image = np.ones((1, 4, 3), np.uint8)
    padded, (top, left) = pad_to_square(image, 7)
    assert padded.shape == (4, 4, 3) and (top, left) == (1, 0)
    np.testing.assert_array_equal(padded[1], 1)
    assert (padded[[0, 2, 3]] == 7).all()
    padded, (top, left) = pad_to_square(np.zeros((5, 2), bool), True)
    assert (top, left) == (0, 1) and padded[:, 0].all() and padded[:, 3:].all() and not padded[:, 1:3].any()
