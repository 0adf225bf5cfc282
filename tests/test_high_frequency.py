import cv2
import numpy as np
import pytest

from anydoor.data.high_frequency import high_frequency_map


def _square_mask(side=256, lo=40, hi=216):
    mask = np.zeros((side, side), bool)
    mask[lo:hi, lo:hi] = True
    return mask


def _step_image(left: int, right: int, side=256, at=128):
    image = np.full((side, side, 3), left, np.uint8)
    image[:, at:] = right
    return image


def _reference_hf(image: np.ndarray, mask: np.ndarray, threshold: int = 50) -> np.ndarray:
    """DESIGN.md's recipe in plain numpy, for a 256x256 input (no resizing)."""
    # 9x9 erosion == two 5x5 erosions; outside the image counts as foreground (cv2.erode's border).
    padded = np.pad(mask, 4, constant_values=True)
    windows = np.lib.stride_tricks.sliding_window_view(padded, (9, 9))
    eroded = windows.all(axis=(-1, -2))
    x = np.pad(image.astype(np.float64), ((1, 1), (1, 1), (0, 0)), mode="reflect")  # BORDER_REFLECT_101
    smooth = np.array([1.0, 2.0, 1.0])
    h, w = image.shape[:2]
    gx = sum(smooth[i] * (x[i : i + h, 2 : 2 + w] - x[i : i + h, 0:w]) for i in range(3))
    gy = sum(smooth[j] * (x[2 : 2 + h, j : j + w] - x[0:h, j : j + w]) for j in range(3))
    ax, ay = np.clip(np.round(np.abs(gx)), 0, 255), np.clip(np.round(np.abs(gy)), 0, 255)
    edges = np.clip(np.round(0.5 * ax + 0.5 * ay), 0, 255).max(axis=2) * eroded
    edges[edges < threshold] = 0
    # (map / 255) * image in float32, in the released order of operations: truncation agrees to the level.
    return (edges.astype(np.float32)[:, :, None] / 255 * image.astype(np.float32)).astype(np.uint8)


def test_flat_object_has_empty_map():
    image = np.zeros((256, 256, 3), np.uint8)
    image[:] = (20, 40, 200)
    mask = _square_mask()
    image[mask] = (250, 10, 10)  # a sharp object outline, removed by the erosion
    assert not high_frequency_map(image, mask).any()
    # also through the resizes
    assert not high_frequency_map(image[:200, :230], mask[:200, :230]).any()


def test_vertical_edge_lights_only_edge_columns_inside_eroded_mask():
    image = _step_image(50, 200)
    out = high_frequency_map(image, _square_mask())
    # |Sobel x| = 4 * 150 -> 255 saturated, Sobel y = 0, blend 0.5 * 255 = 127.5 -> 128 (round half to even)
    expected = np.zeros_like(image)
    expected[44:212, 127] = int(50 * 128 / 255)  # 25
    expected[44:212, 128] = int(200 * 128 / 255)  # 100
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("step, kept", [(20, False), (30, True)])
def test_threshold_removes_weak_edges(step, kept):
    # Sobel x = 4 * step, blended with 0 -> 2 * step: 40 (< 50, dropped) or 60 (kept)
    out = high_frequency_map(_step_image(100, 100 + step), _square_mask())
    assert out[44:212, 127:129].all() == kept
    assert not out[:, :127].any() and not out[:, 129:].any()


def test_threshold_argument():
    image = _step_image(100, 120)  # blended edge 40
    assert not high_frequency_map(image, _square_mask()).any()
    assert high_frequency_map(image, _square_mask(), threshold=40).any()
    with pytest.raises(ValueError, match="threshold"):
        high_frequency_map(image, _square_mask(), threshold=300)


def test_matches_numpy_reference_on_random_texture():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    mask = np.zeros((256, 256), bool)
    mask[30:250, 0:180] = True  # touches the left border
    np.testing.assert_array_equal(high_frequency_map(image, mask), _reference_hf(image, mask))


def test_grey_mask_is_read_as_mask_over_255_above_half():
    # The reference mask is grey at its edge (0/255 resized bilinearly); the
    # released code reads mask / 255 > 0.5. At 256 px the resize is the identity,
    # so a 153 (0.6) half counts as inside and a 102 (0.4) half as outside.
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    grey = np.zeros((256, 256), np.uint8)
    grey[40:216, 40:128] = 153
    grey[40:216, 128:216] = 102
    inside = np.zeros((256, 256), bool)
    inside[40:216, 40:128] = True
    out = high_frequency_map(image, grey)
    np.testing.assert_array_equal(out, high_frequency_map(image, inside))
    np.testing.assert_array_equal(out, _reference_hf(image, inside))
    assert out[44:212, 44:124].any() and not out[:, 124:].any()
    # a float mask in [0, 1] is the same mask
    np.testing.assert_array_equal(high_frequency_map(image, grey / 255.0), out)


def test_mask_is_resized_bilinearly_to_256():
    # 768 -> 256 bilinear reads input column 3x + 1 for output column x (pixel
    # centres); nearest neighbour would read 3x. Grey 100 with one white column
    # at 316 -> white column 105 at 256 px; a mask from column 301 -> starts at
    # column 100 (nearest: 101), eroded by 4 px -> 104. Sobel lights columns 104
    # and 106: 0.5 * 255 -> 128, detail int(100 * 128 / 255) = 50; column 104
    # is lit only because the mask was resized bilinearly.
    image = np.full((768, 768, 3), 100, np.uint8)
    image[:, 316] = 255
    mask = np.zeros((768, 768), bool)
    mask[:, 301:] = True
    expected = np.zeros((256, 256, 3), np.uint8)
    expected[:, [104, 106]] = 50
    np.testing.assert_array_equal(high_frequency_map(image, mask), cv2.resize(expected, (768, 768)))


@pytest.mark.parametrize("hw", [(100, 300), (224, 224), (513, 97)])
def test_keeps_size_and_dtype(hw):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, hw + (3,), dtype=np.uint8)
    mask = np.zeros(hw, bool)
    mask[hw[0] // 4 : 3 * hw[0] // 4, hw[1] // 4 : 3 * hw[1] // 4] = True
    out = high_frequency_map(image, mask)
    assert out.shape == hw + (3,) and out.dtype == np.uint8
    assert out.any() and (out <= image.max()).all()


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="sizes differ"):
        high_frequency_map(np.zeros((10, 10, 3), np.uint8), np.ones((10, 11), bool))
    with pytest.raises(ValueError, match="mask is empty"):
        high_frequency_map(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 10), bool))
