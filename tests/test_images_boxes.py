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
    pad_by_ratio,
    pad_to_square,
    released_expand_box,
    released_mask_box,
    released_ratio,
    released_square_box,
    square_box,
)
from anydoor.data.images import as_binary_mask, as_rgb_uint8, as_soft_mask, load_mask_file, load_rgba_object


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
        PIL.Image.fromarray(np.dstack([expected.astype(np.uint8) * 255] * 3)),  # an RGB mask image
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
    rgba[0, 0, 3] = 128  # the released reading is alpha > 128: out
    rgba[0, 1, 3] = 129
    path = tmp_path / "object.png"
    PIL.Image.fromarray(rgba).save(path)
    for source in (path, str(path), PIL.Image.fromarray(rgba), rgba):
        rgb, mask = load_rgba_object(source)
        np.testing.assert_array_equal(rgb, rgba[:, :, :3])
        assert not mask[0, 0] and mask[0, 1] and mask.sum() == 5


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


# ---------------------------------------------------------------- the released rules (DESIGN.md 1d)


def _mask(hw, *boxes):
    mask = np.zeros(hw, bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def test_released_mask_box_keeps_the_last_row_and_column_as_its_end():
    # columns 3..7, rows 2..4 of a 7 x 9 (H x W) mask: released (x1, y1, x2, y2) = (3, 2, 7, 4)
    assert released_mask_box(_mask((7, 9), (3, 2, 8, 5))) == (3, 2, 7, 4)
    assert mask_box(_mask((7, 9), (3, 2, 8, 5))) == (3, 2, 8, 5)  # the exact box keeps its meaning
    # every border, both orientations: an L of a full top row and a full left column
    assert released_mask_box(_mask((7, 9), (0, 0, 9, 1), (0, 0, 1, 7))) == (0, 0, 8, 6)
    assert released_mask_box(_mask((9, 7), (6, 0, 7, 9), (0, 8, 7, 9))) == (0, 0, 6, 8)
    assert released_mask_box(np.ones((5, 4), bool)) == (0, 0, 3, 4)


def test_released_mask_box_refuses_what_the_released_code_would_silently_replace():
    with pytest.raises(ValueError, match="ref_mask has 9 pixel.s. set, fewer than 10.*whole image"):
        released_mask_box(_mask((20, 20), (2, 2, 5, 5)), "ref_mask")
    assert released_mask_box(_mask((20, 20), (2, 2, 4, 7))) == (2, 2, 3, 6)  # 10 pixels are enough
    with pytest.raises(ValueError, match="mask is one pixel tall"):
        released_mask_box(_mask((20, 20), (2, 5, 14, 6)))
    with pytest.raises(ValueError, match="mask is one pixel wide"):
        released_mask_box(_mask((20, 20), (5, 2, 6, 14)))


def test_released_expand_box_by_hand():
    # (3, 2, 7, 4) x1.1 about (5, 3): w 1.1 * 5 = 5.5, h 1.1 * 3 = 3.3 -> (int(2.25), int(1.35), int(7.75), int(4.65))
    assert released_expand_box((3, 2, 7, 4), 1.1, (7, 9)) == (2, 1, 7, 4)
    # ratio 1 still grows the box up and left: the input is read as inclusive, the output half-open
    assert released_expand_box((3, 2, 7, 4), 1.0, (7, 9)) == (2, 1, 7, 4)
    # (6, 3, 8, 6) x2 about (7, 4.5): w 6, h 8 -> (4, 0.5, 10, 8.5), clipped right and bottom to W 9, H 7
    assert released_expand_box((6, 3, 8, 6), 2.0, (7, 9)) == (4, 0, 9, 7)
    # left and top: (0, 1, 2, 3) x2 about (1, 2): w 6, h 6 -> (-2, -1, 4, 5) clipped to (0, 0, 4, 5)
    assert released_expand_box((0, 1, 2, 3), 2.0, (7, 9)) == (0, 0, 4, 5)
    # odd sizes, a tall box: (2, 1, 4, 11) x1.5 about (3, 6): w 4.5, h 16.5 -> (0.75, -2.25, 5.25, 14.25)
    assert released_expand_box((2, 1, 4, 11), 1.5, (13, 7)) == (0, 0, 5, 13)
    with pytest.raises(ValueError, match="ratio must be positive"):
        released_expand_box((2, 1, 4, 11), 0, (13, 7))
    with pytest.raises(ValueError, match="reversed"):
        released_expand_box((4, 1, 2, 11), 1.1, (13, 7))


def test_released_square_box_by_hand():
    # h 8 >= w 5: x = cx -+ h // 2 = 4 -+ 4
    assert released_square_box((2, 1, 7, 9), (20, 20)) == (0, 1, 8, 9)
    # w 9 > h 4: y = 4 -+ 4, so the odd side 9 gives a 9 x 8 box
    assert released_square_box((1, 2, 10, 6), (20, 20)) == (1, 0, 10, 8)
    # equal odd sides lose a column: x 2 -+ 2
    assert released_square_box((0, 0, 5, 5), (20, 20)) == (0, 0, 4, 5)
    # clipped left (x 2 -+ 5 -> -3..7) and bottom (y 17 -+ 2 -> 15..19 in H 18)
    assert released_square_box((0, 10, 4, 20), (20, 10)) == (0, 10, 7, 20)
    assert released_square_box((5, 16, 10, 18), (18, 12)) == (5, 15, 10, 18)


def test_released_ratio_draws_multiples_of_a_tenth_hi_excluded():
    rng = np.random.default_rng(0)
    assert {released_ratio((1.1, 1.2), rng) for _ in range(50)} == {1.1}
    crops = {released_ratio((1.3, 3.0), rng) for _ in range(2000)}
    assert crops == {k / 10 for k in range(13, 30)}
    assert released_ratio((1.2, 1.3), rng) == 1.2  # 12 / 10: the same double as the literal
    state = rng.bit_generator.state
    assert released_ratio((2.0, 2.0), rng) == 2.0 and rng.bit_generator.state == state  # pinned: no draw
    with pytest.raises(ValueError, match="lo <= hi"):
        released_ratio((1.5, 1.2), rng)


def test_pad_by_ratio_truncates_and_puts_the_odd_pixel_after():
    image = np.arange(15, dtype=np.uint8).reshape(5, 3)
    out = pad_by_ratio(image, 1.5, 200)  # int(7.5) x int(4.5) = 7 x 4: 1 row on top, 1 below, 0 left, 1 right
    assert out.shape == (7, 4)
    np.testing.assert_array_equal(out[1:6, 0:3], image)
    assert (out[0] == 200).all() and (out[6] == 200).all() and (out[:, 3] == 200).all()
    assert pad_by_ratio(np.zeros((49, 29, 3), np.uint8), 1.2, 255).shape == (58, 34, 3)  # int(58.8), int(34.8)
    with pytest.raises(ValueError, match="ratio must be >= 1"):
        pad_by_ratio(image, 0.9, 0)


def test_pad_to_square_split_is_int_half_before():
    padded, (top, left) = pad_to_square(np.ones((2, 5), np.uint8), 0)  # pad 3: 1 row before, 2 after
    assert (top, left) == (1, 0) and padded[1:3].all() and not padded[[0, 3, 4]].any()


# ---------------------------------------------------------------- soft masks and mask files


def test_as_soft_mask_reads_grey_as_over_255():
    grey = np.array([[0, 102, 153, 255]], np.uint8)
    np.testing.assert_allclose(as_soft_mask(grey), [[0.0, 0.4, 0.6, 1.0]])
    np.testing.assert_array_equal(as_soft_mask(np.array([[0, 1, 1]], np.uint8)), [[0.0, 1.0, 1.0]])  # 0/1 is binary
    np.testing.assert_array_equal(as_soft_mask(np.array([[False, True]])), [[0.0, 1.0]])
    with pytest.raises(ValueError, match="ref_mask is a float mask with values outside"):
        as_soft_mask(np.array([[0.0, 1.5]]), "ref_mask")
    with pytest.raises(ValueError, match="ref_mask is empty"):
        as_soft_mask(np.zeros((3, 3), np.uint8), "ref_mask")


def _write(path, image):
    image.save(path)
    return path


def _grid(values, scale=4):
    """A small picture of a mask: each value becomes a scale x scale block (enough pixels to pass the 10 px rule)."""
    return np.kron(np.asarray(values), np.ones((scale, scale), np.int64))


def test_load_mask_file_l_rgb_rgba_palette(tmp_path):
    grey = _grid([[0, 128, 129, 255]]).astype(np.uint8)  # above 128 is in
    mask = load_mask_file(_write(tmp_path / "l.png", PIL.Image.fromarray(grey)))
    np.testing.assert_array_equal(mask, grey > 128)
    rgb = np.zeros((4, 16, 3), np.uint8)
    rgb[:, 4:8] = (0, 0, 200)  # any colour channel above 128
    rgb[:, 8:12] = (128, 128, 128)  # none above 128
    rgb[:, 12:16] = (129, 0, 0)
    mask = load_mask_file(_write(tmp_path / "rgb.png", PIL.Image.fromarray(rgb)))
    np.testing.assert_array_equal(mask, _grid([[0, 1, 0, 1]]).astype(bool))
    rgba = np.dstack([rgb, np.zeros((4, 16), np.uint8)])  # alpha is ignored in a mask file
    np.testing.assert_array_equal(load_mask_file(_write(tmp_path / "rgba.png", PIL.Image.fromarray(rgba))), mask)
    labels = _grid([[0, 1, 2, 0]]).astype(np.uint8)
    palette = PIL.Image.frombytes("P", (16, 4), labels.tobytes())
    palette.putpalette([255, 255, 255, 0, 0, 0, 10, 10, 10] + [0] * 759)  # index 0 is white, 1 black
    mask = load_mask_file(_write(tmp_path / "p.png", palette))
    np.testing.assert_array_equal(mask, labels != 0)  # the index, not the colour


def test_load_mask_file_jpeg(tmp_path):
    mask = np.zeros((48, 64), np.uint8)
    mask[8:40, 16:48] = 255  # blocks of 8 px: JPEG keeps them, its noise stays far from 128
    for mode in ("L", "RGB"):
        image = PIL.Image.fromarray(mask).convert(mode)
        loaded = load_mask_file(_write(tmp_path / f"{mode}.jpg", image), role="scene", shape=(48, 64))
        np.testing.assert_array_equal(loaded, mask > 0)


def test_load_mask_file_roles_and_errors(tmp_path):
    full = _write(tmp_path / "full.png", PIL.Image.fromarray(np.full((6, 8, 3), 255, np.uint8)))
    assert load_mask_file(full, role="object").all()  # the whole image is the object
    with pytest.raises(ValueError, match="full.png' has every pixel set: a scene mask must leave some scene"):
        load_mask_file(full, role="scene")
    empty = _write(tmp_path / "empty.png", PIL.Image.fromarray(np.full((6, 8), 128, np.uint8)))
    with pytest.raises(ValueError, match="empty.png' is empty: no pixel is set .mode L: a pixel is in when a colour channel is above 128"):
        load_mask_file(empty)
    few = np.zeros((6, 8), np.uint8)
    few[1:4, 1:4] = 255
    with pytest.raises(ValueError, match="few.png' has only 9 pixel.s. set, fewer than 10.*whole image"):
        load_mask_file(_write(tmp_path / "few.png", PIL.Image.fromarray(few)), role="object")
    with pytest.raises(ValueError, match=r"full.png' is \(6, 8\) \(H, W\) but its image is \(8, 6\)"):
        load_mask_file(full, role="object", shape=(8, 6))
    deep = _write(tmp_path / "deep.png", PIL.Image.fromarray(np.full((6, 8), 1000, np.uint16)))
    with pytest.raises(ValueError, match="deep.png' has PIL mode 'I;16"):
        load_mask_file(deep)
    with pytest.raises(ValueError, match="role must be one of"):
        load_mask_file(full, role="target")
