import pickle

import cv2
import numpy as np
import PIL.Image
import pytest
import torch

from anydoor.data.boxes import pad_to_square
from anydoor.data.detail_maps import DETAIL_MAP_NAMES
from anydoor.data.images import load_mask_file, load_rgba_object
from anydoor.data.pairs import (
    AnyDoorSample,
    PairConfig,
    PairDraws,
    PairRejected,
    collate_samples,
    crop_as_generated,
    paste_back,
    prepare_inference_inputs,
    prepare_training_pair,
    sample_to_tensors,
)
from anydoor.data.perturb import perturb_mask

SMALL = PairConfig(image_size=64)
# Fixed ratios and no randomness in the mask channel: the geometry can be computed by hand.
# S = 84 is the side of the padded crop of `_pair`'s target below, so nothing is resized.
FIXED = PairConfig(
    image_size=84, target_box_range=(1.1, 1.1), crop_range=(2.0, 2.0), ref_pad_range=(1.0, 1.0),
    shape_mask_prob=0.0, augment=False,
)
# `_pair`'s object (30, 20, 50, 60) under FIXED, the released rules by hand (DESIGN.md 1d):
# released box (30, 20, 49, 59) (last column and row); x1.1 about (39.5, 39.5): w 22, h 44 ->
# (28, 17, 50, 61); x2.0 about (39, 39): w 46, h 90 -> (16, -6, 62, 84) clipped (16, 0, 62, 84);
# squared around (39, 42) with h 84 >= w 46: x 39 -+ 42 -> (0, 0, 81, 84); padded 1 px left, 2 right.
FIXED_BOX, FIXED_CROP = (28, 17, 50, 61), (0, 0, 81, 84)


def _texture(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _box_mask(hw, box):
    x0, y0, x1, y1 = box
    mask = np.zeros(hw, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def _pair(seed=0):
    """A 100x120 reference and target with a 20x40 (w x h) object each."""
    ref, tar = _texture(100, 120, seed), _texture(100, 120, seed + 1)
    return ref, _box_mask((100, 120), (30, 20, 50, 60)), tar, _box_mask((100, 120), (60, 30, 90, 55))


def _cross(hw=(100, 120)):
    """A plus-shaped mask whose box is (30, 20, 50, 60), with background inside the box."""
    return _box_mask(hw, (37, 20, 43, 60)) | _box_mask(hw, (30, 35, 50, 45))


def _to_uint8(x):
    return np.round((x + 1.0) * 127.5).astype(np.uint8)


def _assert_samples_equal(a: AnyDoorSample, b: AnyDoorSample):
    for field in ("reference", "target", "hint", "detail"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.paste == b.paste and a.kind == b.kind


# ---------------------------------------------------------------- training pairs


def test_training_sample_shapes_dtypes_ranges():
    sample = prepare_training_pair(*_pair(), rng=np.random.default_rng(0), config=SMALL, kind="video")
    assert sample.reference.shape == (224, 224, 3) and sample.reference.dtype == np.float32
    assert sample.target.shape == (64, 64, 3) and sample.target.dtype == np.float32
    assert sample.hint.shape == (64, 64, 4) and sample.hint.dtype == np.float32
    assert sample.detail.shape == (224, 224, 3) and sample.detail.dtype == np.uint8
    assert 0.0 <= sample.reference.min() and sample.reference.max() <= 1.0
    for x in (sample.target, sample.hint[..., :3]):
        assert -1.0 <= x.min() and x.max() <= 1.0
    assert set(np.unique(sample.hint[..., 3])) <= {-1.0, 0.0, 1.0}
    assert (sample.hint[..., 3] == 1.0).any()
    assert sample.kind == "video"


def test_training_is_deterministic_per_seed_and_varies_across_seeds():
    a = prepare_training_pair(*_pair(), rng=np.random.default_rng(5), config=SMALL)
    b = prepare_training_pair(*_pair(), rng=np.random.default_rng(5), config=SMALL)
    _assert_samples_equal(a, b)
    others = [prepare_training_pair(*_pair(), rng=np.random.default_rng(s), config=SMALL) for s in range(6, 9)]
    assert any(o.paste != a.paste for o in others)
    assert all(not np.array_equal(o.hint, a.hint) for o in others)


def test_detail_map_arms_share_the_geometry_for_a_seed():
    # common random numbers: a random detail map must not shift the crop draws
    pastes = {
        name: prepare_training_pair(
            *_pair(), rng=np.random.default_rng(11), config=PairConfig(image_size=64, detail_map=name)
        ).paste
        for name in DETAIL_MAP_NAMES
    }
    assert len({str(p) for p in pastes.values()}) == 1


def test_training_geometry_by_hand():
    ref, ref_mask, tar, _ = _pair()
    tar_mask = _box_mask((100, 120), (30, 20, 50, 60))  # w 20, h 40
    sample = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(0), FIXED)
    assert sample.paste.crop_box == FIXED_CROP
    assert sample.paste.crop_hw == (84, 81) and sample.paste.pad == (0, 1) and sample.paste.padded_side == 84
    target = _to_uint8(sample.target)
    np.testing.assert_array_equal(target[:, 1:82], tar[0:84, 0:81])
    assert (sample.target[:, 0] == -1).all() and (sample.target[:, 82:] == -1).all()  # black padding
    expected = np.full((84, 84), -1.0, np.float32)  # mask channel: -1 padding, 0 crop, 1 box
    expected[:, 1:82] = 0.0
    expected[17:61, 29:51] = 1.0  # the box (28, 17, 50, 61) shifted by the 1 px left padding
    np.testing.assert_array_equal(sample.hint[..., 3], expected)
    collage = _to_uint8(sample.hint[..., :3])[:, 1:82]
    outside = ~_box_mask((84, 81), FIXED_BOX)
    np.testing.assert_array_equal(collage[outside], tar[0:84, 0:81][outside])
    np.testing.assert_array_equal(collage[17:61, 28:50], cv2.resize(sample.detail, (22, 44)))
    # reference: the released crop is 19 x 39 (w x h: last column and row left out), padded to a
    # 39 px square with 10 white columns each side. 224 px bilinear reads input column
    # (x + 0.5) * 39 / 224 - 0.5: columns 0..54 read only padding, 55 the object; 169.. only padding.
    reference = sample.reference
    assert (reference[:, :55] == 1.0).all() and not (reference[:, 55] == 1.0).all()
    assert (reference[:, 169:] == 1.0).all() and not (reference[:, 168] == 1.0).all()


def test_training_draws_pin_the_released_geometry():
    ref, ref_mask, tar, _ = _pair()
    tar_mask = _box_mask((100, 120), (30, 20, 50, 60))
    pinned = dict(ref_pad=1.0, target_box=1.1, crop=2.0, flip=False, jitter=None, shape_mask=False)
    config = PairConfig(image_size=84)  # default ranges: the draws replace them
    for seed in range(3):
        sample = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(seed), config, draws=pinned)
        fixed = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(seed), FIXED)
        assert sample.paste.crop_box == FIXED_CROP and sample.draws == PairDraws(**pinned)
        _assert_samples_equal(sample, fixed)
    # crop 1.3 (the smallest released crop): (28, 17, 50, 61) about (39, 39): w 1.3 * 23 = 29.9,
    # h 1.3 * 45 = 58.5 -> (24, 9, 53, 68); squared around (38, 38), h 59 >= w 29: x 38 -+ 29 -> (9, 9, 67, 68)
    small = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(0), config,
                                  draws={**pinned, "crop": 1.3})
    assert small.paste.crop_box == (9, 9, 67, 68)
    assert small.paste.crop_hw == (59, 58) and small.paste.pad == (0, 0)  # (59 - 58) // 2 = 0 left, 1 right
    # nearest neighbour 59 -> 84 reads input column floor(x * 59 / 84): only output column 83 reads the padding
    assert (small.hint[:, 83, 3] == -1).all() and not (small.hint[:, :83, 3] == -1).any()


def test_training_default_draws_are_the_released_ones():
    ref, ref_mask, tar, tar_mask = _pair()
    seen = {"ref_pad": set(), "target_box": set(), "crop": set(), "flip": set(), "jitter": set()}
    for seed in range(60):
        draws = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(seed), SMALL).draws
        for name in ("ref_pad", "target_box", "crop", "flip"):
            seen[name].add(getattr(draws, name))
        seen["jitter"].add(draws.jitter is None)
        if draws.jitter is not None:
            assert 0.8 <= draws.jitter[0] <= 1.2 and -0.2 <= draws.jitter[1] <= 0.2
    # randint(10 lo, 10 hi) / 10: multiples of 0.1, hi excluded, (1.1, 1.2) always 1.1
    assert seen["target_box"] == {1.1}
    assert seen["ref_pad"] == {1.1, 1.2, 1.3, 1.4}
    assert seen["crop"] <= {k / 10 for k in range(13, 30)} and len(seen["crop"]) >= 12
    assert seen["flip"] == {True, False} and seen["jitter"] == {True, False}


def test_training_draws_errors():
    args = (*_pair(), np.random.default_rng(0), SMALL)
    with pytest.raises(ValueError, match=r"draws has unknown fields \['crop_ratio'\]"):
        prepare_training_pair(*args, draws={"crop_ratio": 2.0})
    with pytest.raises(ValueError, match="draws.ref_pad must be a number >= 1, got 0.9"):
        prepare_training_pair(*args, draws={"ref_pad": 0.9})
    with pytest.raises(TypeError, match="draws.flip must be a bool"):
        prepare_training_pair(*args, draws={"flip": "yes"})
    with pytest.raises(TypeError, match="draws must be a PairDraws or a dict"):
        prepare_training_pair(*args, draws=[1.1, 1.1, 2.0])


def test_shape_mask_contains_true_mask():
    ref, ref_mask, tar, _ = _pair()
    tar_mask = _cross()  # its box is `_pair`'s, so the crop is FIXED_CROP
    config = PairConfig(**{**FIXED.__dict__, "shape_mask_prob": 1.0})
    masks = []
    for seed in range(4):
        sample = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(seed), config)
        assert sample.paste.crop_box == FIXED_CROP and sample.paste.padded_side == 84 and sample.draws.shape_mask
        channel = sample.hint[..., 3]
        assert (channel[:, 0] == -1).all() and (channel[:, 82:] == -1).all()
        inner = channel[:, 1:82]
        assert set(np.unique(inner)) <= {0.0, 1.0}
        assert (inner[tar_mask[0:84, 0:81]] == 1.0).all()
        masks.append(channel)
    assert any(not np.array_equal(m, masks[0]) for m in masks[1:])


def test_remove_background_switch():
    ref, _, tar, tar_mask = _pair()
    ref_mask = _cross()
    ref[~ref_mask] = (0, 255, 0)  # green background
    green = np.array([0.0, 1.0, 0.0], np.float32)
    config = PairConfig(**{**FIXED.__dict__, "ref_pad_range": (1.3, 1.3)})
    removed = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(0), config)
    kept_config = PairConfig(**{**config.__dict__, "remove_background": False})
    kept = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(0), kept_config)
    assert not (removed.reference == green).all(axis=-1).any()
    assert (kept.reference == green).all(axis=-1).any()
    # 19 x 39 crop padded by 1.3: int(24.7) x int(50.7) = 24 x 50, (50 - 39) // 2 = 5 white rows on top;
    # 224 px bilinear reads input row (y + 0.5) * 50 / 224 - 0.5: rows 0..19 read only those 5 rows
    for sample in (removed, kept):  # the ratio padding is white either way
        assert (sample.reference[:20] == 1.0).all() and not (sample.reference[20] == 1.0).all()


def test_augmentation_flips_and_jitters_image_and_mask_together():
    ref, ref_mask, tar, tar_mask = _pair()
    plain = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(0), FIXED)
    flipped = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(0), FIXED, draws={"flip": True})
    np.testing.assert_array_equal(flipped.reference, plain.reference[:, ::-1])
    np.testing.assert_array_equal(flipped.detail, plain.detail[:, ::-1])  # the map follows the flipped mask
    np.testing.assert_array_equal(flipped.target, plain.target)
    # brightness -0.1: a float32 table v - 25.5, truncated: v -> max(v - 26, 0), white 255 -> 229. The
    # released augmentation (albumentations) jitters the whole reference, its white background too.
    darker = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(0), FIXED,
                                   draws={"jitter": (1.0, -0.1)})
    before = np.round(plain.reference * 255).astype(np.int32)
    np.testing.assert_array_equal(np.round(darker.reference * 255), np.maximum(before - 26, 0))
    assert (np.round(darker.reference[:, :55] * 255) == 229).all()
    np.testing.assert_array_equal(darker.target, plain.target)
    augmented = [
        prepare_training_pair(
            ref, ref_mask, tar, tar_mask, np.random.default_rng(s), PairConfig(**{**FIXED.__dict__, "augment": True})
        )
        for s in range(6)
    ]
    assert any(not np.array_equal(s.reference, plain.reference) for s in augmented)
    assert {s.draws.flip for s in augmented} == {True, False}


@pytest.mark.parametrize("name", DETAIL_MAP_NAMES)
def test_each_detail_variant_is_pasted_into_the_box(name):
    config = PairConfig(**{**FIXED.__dict__, "detail_map": name})
    sample = prepare_training_pair(*_pair()[:2], *_pair()[:2], rng=np.random.default_rng(0), config=config)
    collage = _to_uint8(sample.hint[..., :3])
    # FIXED_BOX (28, 17, 50, 61) in the crop, 1 px of left padding
    np.testing.assert_array_equal(collage[17:61, 29:51], cv2.resize(sample.detail, (22, 44)))
    if name == "none":
        assert (sample.hint[17:61, 29:51, :3] == -1.0).all()
    if name == "rgb":
        np.testing.assert_array_equal(sample.detail, np.round(sample.reference * 255).astype(np.uint8))


# ---------------------------------------------------------------- quality checks


def _valid():
    image = _texture(100, 100)
    return image, _box_mask((100, 100), (30, 30, 60, 70)), image, _box_mask((100, 100), (30, 30, 60, 70))


@pytest.mark.parametrize(
    "which, mask, reason",
    [
        ("ref", _box_mask((100, 100), (10, 10, 15, 15)), "ref_area_ratio"),
        ("ref", np.ones((100, 100), bool), "ref_area_ratio"),
        ("ref", _box_mask((100, 100), (5, 5, 25, 25)) | _box_mask((100, 100), (60, 60, 80, 80)), "ref_dominant_region"),
        ("ref", _box_mask((100, 100), (40, 20, 45, 70)), "ref_box_size"),
        ("tar", _box_mask((100, 100), (10, 10, 15, 15)), "tar_area_ratio"),
        ("tar", _box_mask((100, 100), (10, 10, 88, 50)), "tar_box_size"),
    ],
)
def test_quality_checks_reject_with_reason(which, mask, reason):
    ref, ref_mask, tar, tar_mask = _valid()
    if which == "ref":
        ref_mask = mask
    else:
        tar_mask = mask
    with pytest.raises(PairRejected) as info:
        prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(0), SMALL)
    assert info.value.reason == reason
    assert isinstance(info.value, ValueError)


def test_box_rule_both_accepts_one_failing_side():
    ref, ref_mask, tar, tar_mask = _valid()
    both = PairConfig(image_size=64, box_rule="both")
    thin = _box_mask((100, 100), (40, 20, 45, 70))  # 5 px wide, 50 tall
    wide = _box_mask((100, 100), (10, 10, 88, 50))  # expanded width > 80, height < 80
    prepare_training_pair(ref, thin, tar, tar_mask, np.random.default_rng(0), both)
    prepare_training_pair(ref, ref_mask, tar, wide, np.random.default_rng(0), both)


def test_pair_rejected_pickles():
    error = PairRejected("ref_area_ratio", "reference mask covers 0.001 of the image")
    copy = pickle.loads(pickle.dumps(error))
    assert copy.reason == "ref_area_ratio" and str(copy) == str(error)


# ---------------------------------------------------------------- bad inputs


def test_training_accepts_unambiguous_conversions():
    ref, ref_mask, tar, tar_mask = _valid()
    gray = cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY)
    rgba = np.dstack([tar, np.full((100, 100), 255, np.uint8)])
    sample = prepare_training_pair(
        gray, ref_mask.astype(np.uint8) * 255, rgba.astype(np.float32) / 255, tar_mask.astype(np.float32),
        np.random.default_rng(0), SMALL,
    )
    assert sample.target.shape == (64, 64, 3)


@pytest.mark.parametrize(
    "change, error, words",
    [
        ({"ref_image": np.zeros((100, 100, 3), np.uint16)}, TypeError, "ref_image has dtype uint16"),
        ({"tar_image": np.full((100, 100, 3), 200.0)}, ValueError, "tar_image is a float image"),
        ({"ref_mask": np.zeros((100, 100), bool)}, ValueError, "ref_mask is empty"),
        ({"tar_mask": np.ones((90, 100), bool)}, ValueError, "mask and image sizes differ: tar_mask"),
        ({"ref_mask": np.full((100, 100), 0.5)}, ValueError, "ref_mask is not binary"),
        ({"rng": 0}, TypeError, "numpy.random.Generator"),
        ({"kind": "photo"}, ValueError, "kind must be one of"),
    ],
)
def test_training_bad_inputs(change, error, words):
    ref, ref_mask, tar, tar_mask = _valid()
    args = dict(ref_image=ref, ref_mask=ref_mask, tar_image=tar, tar_mask=tar_mask, rng=np.random.default_rng(0))
    args.update(change)
    with pytest.raises(error, match=words):
        prepare_training_pair(**args, config=SMALL)


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"detail_map": "edges"}, "hf, rgb, noise, shuffle, none"),
        ({"box_rule": "any"}, "box_rule"),
        ({"crop_range": (0.5, 2.0)}, "crop_range"),
        ({"shape_mask_prob": 1.5}, "shape_mask_prob"),
        ({"image_size": 0}, "image_size"),
    ],
)
def test_config_validation(fields, words):
    with pytest.raises(ValueError, match=words):
        PairConfig(**fields)


def test_config_ranges_from_lists_become_tuples():
    assert PairConfig(crop_range=[1.5, 2.5]).crop_range == (1.5, 2.5)


# ---------------------------------------------------------------- inference


def _scene():
    return _texture(200, 300, seed=3)


def _object():
    image = _texture(60, 50, seed=4)
    return image, _box_mask((60, 50), (10, 5, 40, 55))


def test_inference_geometry_by_hand_asymmetric_box():
    # box (100, 50, 140, 110) = a mask's released box (100, 50, 139, 109); x1.1 about (119.5, 79.5):
    # w 44, h 66 -> (97, 46, 141, 112); x2.0 about (119, 79): w 90, h 134 -> (74, 12, 164, 146);
    # squared around (119, 79) with h 134 >= w 90: x 119 -+ 67 -> (52, 12, 186, 146), 134 x 134
    config = PairConfig(image_size=134)
    sample = prepare_inference_inputs(*_object(), _scene(), scene_box=(100, 50, 140, 110), config=config)
    assert sample.paste.crop_box == (52, 12, 186, 146)
    assert sample.paste.crop_hw == (134, 134) and sample.paste.pad == (0, 0) and sample.paste.scene_hw == (200, 300)
    np.testing.assert_array_equal(sample.hint[..., 3], _box_mask((134, 134), (45, 34, 89, 100)).astype(np.float32))
    assert not sample.target.any() and sample.target.shape == (134, 134, 3)
    collage = _to_uint8(sample.hint[..., :3])
    outside = sample.hint[..., 3] == 0
    np.testing.assert_array_equal(collage[outside], _scene()[12:146, 52:186][outside])
    np.testing.assert_array_equal(collage[34:100, 45:89], cv2.resize(sample.detail, (44, 66)))


def test_inference_geometry_by_hand_border_box():
    # box (0, 150, 30, 200) -> released (0, 150, 29, 199); x1.1 about (14.5, 174.5): w 33, h 55 ->
    # (int(-2.0), int(147.0), 31, int(202.0)) clipped (0, 147, 31, 200); x2.0 about (15.5, 173.5): w 64,
    # h 108 -> (int(-16.5), 119, 47, 227) clipped (0, 119, 47, 200); squared around (23, 159) with
    # h 81 >= w 47: x 23 -+ 40 -> (-17, 119, 63, 200) clipped (0, 119, 63, 200): 63 wide, 81 tall
    config = PairConfig(image_size=81)
    sample = prepare_inference_inputs(*_object(), _scene(), scene_box=(0, 150, 30, 200), config=config)
    paste = sample.paste
    assert paste.crop_box == (0, 119, 63, 200)
    assert paste.crop_hw == (81, 63) and paste.pad == (0, 9) and paste.padded_side == 81
    channel = sample.hint[..., 3]
    assert (channel[:, :9] == -1).all() and (channel[:, 72:] == -1).all()
    np.testing.assert_array_equal(channel[:, 9:72], _box_mask((81, 63), (0, 28, 31, 81)).astype(np.float32))
    assert (sample.hint[:, :9, :3] == -1).all()  # black padding


def test_inference_mask_channel_padding_is_minus_one_as_in_training():
    # A deliberate departure: the released inference pads the mask channel with -1, casts it to
    # uint8 (255) and thresholds a bilinear resize at 0.5, so its padding reads 1; its training,
    # and this project everywhere, pads with -1 and resizes with nearest neighbour.
    config = PairConfig(image_size=64)
    sample = prepare_inference_inputs(*_object(), _scene(), scene_box=(0, 150, 30, 200), config=config)
    (top, left), (h, w), side = sample.paste.pad, sample.paste.crop_hw, sample.paste.padded_side
    assert (top, left, h, w, side) == (0, 9, 81, 63, 81)
    channel = sample.hint[..., 3]
    # nearest neighbour 81 -> 64 reads input column floor(x * 81 / 64): padding 0..8 -> x 0..7, 72.. -> x 57..
    assert (channel[:, :8] == -1).all() and (channel[:, 57:] == -1).all()
    assert not (channel[:, 8:57] == -1).any() and set(np.unique(channel[:, 8:57])) == {0.0, 1.0}


def test_inference_scene_mask_equals_its_box_and_is_deterministic():
    scene_mask = np.zeros((200, 300), bool)
    cv2.circle(scene_mask.view(np.uint8), (120, 80), 25, 1, -1)
    from_mask = prepare_inference_inputs(*_object(), _scene(), scene_mask=scene_mask, config=SMALL)
    x0, y0, x1, y1 = 95, 55, 146, 106  # the circle's box
    from_box = prepare_inference_inputs(*_object(), _scene(), scene_box=(x0, y0, x1, y1), config=SMALL)
    _assert_samples_equal(from_mask, from_box)
    again = prepare_inference_inputs(*_object(), _scene(), scene_box=(x0, y0, x1, y1), config=SMALL)
    _assert_samples_equal(from_box, again)


def test_inference_shape_control_puts_the_silhouette_in_the_mask_channel():
    # The asymmetric-box geometry above, with a cross-shaped silhouette of that box.
    config = PairConfig(image_size=134)
    silhouette = np.zeros((200, 300), bool)
    silhouette[50:110, 115:125] = True  # vertical bar, x 115..125
    silhouette[75:85, 100:140] = True  # horizontal bar spanning the box's width
    boxed = prepare_inference_inputs(*_object(), _scene(), scene_mask=silhouette, config=config)
    shaped = prepare_inference_inputs(*_object(), _scene(), scene_mask=silhouette, config=config, shape_control=True)
    assert shaped.paste == boxed.paste  # same geometry: only the mask channel changes
    np.testing.assert_array_equal(shaped.hint[..., :3], boxed.hint[..., :3])
    np.testing.assert_array_equal(shaped.reference, boxed.reference)
    np.testing.assert_array_equal(shaped.hint[..., 3], silhouette[12:146, 52:186].astype(np.float32))
    assert boxed.hint[..., 3].sum() > shaped.hint[..., 3].sum() > 0


def test_inference_shape_control_bad_inputs():
    image, mask = _object()
    with pytest.raises(ValueError, match="shape_control=True needs a scene_mask"):
        prepare_inference_inputs(image, mask, _scene(), scene_box=(10, 10, 60, 60), config=SMALL, shape_control=True)
    scene_mask = _box_mask((200, 300), (10, 10, 60, 60))
    with pytest.raises(TypeError, match="shape_control must be a bool, got str 'yes'"):
        prepare_inference_inputs(image, mask, _scene(), scene_mask=scene_mask, config=SMALL, shape_control="yes")


def test_inference_reference_is_padded_by_1_2_without_augmentation():
    # object (10, 5, 40, 55): released crop rows 5..53, columns 10..38 (29 x 49, w x h); padded by
    # 1.2 to int(34.8) x int(58.8) = 34 x 58 (4 rows on top, 2 columns left), squared to 58 with 12
    # more columns each side: object rows 4..52, columns 14..42 of 58. 224 px bilinear reads input
    # row (y + 0.5) * 58 / 224 - 0.5, so rows 14..206 and columns 52..167 touch the object.
    image, mask = _object()
    sample = prepare_inference_inputs(image, mask, _scene(), scene_box=(10, 10, 60, 60), config=SMALL)
    obj = np.round(sample.reference * 255).astype(np.uint8)
    rows = np.flatnonzero((obj != 255).any(axis=(1, 2)))
    cols = np.flatnonzero((obj != 255).any(axis=(0, 2)))
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (14, 206, 52, 167)
    again = prepare_inference_inputs(image, mask, _scene(), scene_box=(10, 10, 60, 60), config=SMALL)
    np.testing.assert_array_equal(again.reference, sample.reference)  # no augmentation, no draw


@pytest.mark.parametrize("name", DETAIL_MAP_NAMES)
def test_inference_detail_variants(name):
    config = PairConfig(image_size=64, detail_map=name)

    def run(rng):
        return prepare_inference_inputs(*_object(), _scene(), scene_box=(100, 50, 140, 110), config=config, rng=rng)

    a = run(np.random.default_rng(1))
    _assert_samples_equal(a, run(np.random.default_rng(1)))
    if name in ("noise", "shuffle"):
        assert not np.array_equal(a.detail, run(np.random.default_rng(2)).detail)
        with pytest.raises(ValueError, match="rng"):
            run(None)


def test_inference_edge_cases_that_work():
    image, _ = _object()
    everything = np.ones((200, 300), bool)
    full = prepare_inference_inputs(image, np.ones((60, 50), bool), _scene(), scene_mask=everything, config=SMALL)
    assert full.paste.crop_box == (0, 0, 300, 200) and full.paste.pad == (50, 0)
    border_object = _box_mask((60, 50), (0, 0, 20, 60))
    prepare_inference_inputs(image, border_object, _scene(), scene_box=(0, 0, 300, 200), config=SMALL)


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({}, ValueError, "exactly one of scene_mask and scene_box, got neither"),
        ({"scene_box": (0, 0, 10, 10), "scene_mask": np.ones((200, 300), bool)}, ValueError, "got both"),
        ({"scene_box": (250, 10, 320, 50)}, ValueError, r"scene_box \(250, 10, 320, 50\) is not inside the scene"),
        ({"scene_box": (10, 10, 10, 20)}, ValueError, "scene_box .* is empty"),
        ({"scene_box": (0, 0, 10)}, TypeError, "scene_box must be 4 integers"),
        ({"scene_mask": np.ones((100, 300), bool)}, ValueError, "sizes differ: scene_mask"),
        ({"scene_mask": np.zeros((200, 300), bool)}, ValueError, "scene_mask is empty"),
        ({"scene_box": (0, 0, 10, 10), "object_mask": _box_mask((60, 50), (10, 5, 19, 55))}, ValueError, "10 px"),
        ({"scene_box": (0, 0, 10, 10), "object_image": np.zeros((60, 50, 3), np.int32)}, TypeError, "dtype int32"),
        ({"scene_box": (0, 0, 10, 10), "scene_image": np.zeros((200, 300, 3), bool)}, TypeError, "scene_image"),
        ({"scene_box": (0, 0, 10, 10), "rng": 3}, TypeError, "numpy.random.Generator"),
    ],
)
def test_inference_bad_inputs(kwargs, error, words):
    image, mask = _object()
    args = dict(object_image=image, object_mask=mask, scene_image=_scene())
    args.update(kwargs)
    with pytest.raises(error, match=words):
        prepare_inference_inputs(**args, config=SMALL)


def test_inference_box_clipped_to_an_odd_squared_crop():
    # scene 60 x 80, box (46, 4, 80, 37) on the right border -> released (46, 4, 79, 36); x1.1 about
    # (62.5, 20): w 37.4, h 36.3 -> (43, 1, 81 -> 80, 38); x2.0 about (61.5, 19.5): w 76, h 76 ->
    # (23, -18 -> 0, 99 -> 80, 57), a 57 x 57 square; squared around (51, 28): x 51 -+ 28 -> (23, 0, 79, 57).
    # The box's last column (79) is outside the crop: the released code fails on this pair (shape
    # mismatch when pasting); here the box is clipped to (43, 1, 79, 38), (20, 1, 56, 38) in the crop.
    scene = _texture(60, 80, seed=5)
    sample = prepare_inference_inputs(*_object(), scene, scene_box=(46, 4, 80, 37), config=PairConfig(image_size=57))
    assert sample.paste.crop_box == (23, 0, 79, 57) and sample.paste.pad == (0, 0) and sample.paste.crop_hw == (57, 56)
    expected = np.zeros((57, 57), np.float32)
    expected[:, 56] = -1.0  # (57 - 56) // 2 = 0 columns left, 1 right
    expected[1:38, 20:56] = 1.0
    np.testing.assert_array_equal(sample.hint[..., 3], expected)
    np.testing.assert_array_equal(_to_uint8(sample.hint[1:38, 20:56, :3]), cv2.resize(sample.detail, (36, 37)))


def test_inference_mask_errors():
    image, mask = _object()
    tiny = _box_mask((200, 300), (50, 50, 53, 53))  # 9 pixels
    with pytest.raises(ValueError, match="scene_mask has 9 pixel.s. set, fewer than 10.*whole image"):
        prepare_inference_inputs(image, mask, _scene(), scene_mask=tiny, config=SMALL)
    with pytest.raises(ValueError, match=r"scene_box \(50, 50, 53, 53\) has 9 pixel"):
        prepare_inference_inputs(image, mask, _scene(), scene_box=(50, 50, 53, 53), config=SMALL)
    line = _box_mask((200, 300), (50, 50, 80, 51))  # 30 pixels in one row
    with pytest.raises(ValueError, match="scene_mask is one pixel tall"):
        prepare_inference_inputs(image, mask, _scene(), scene_mask=line, config=SMALL)
    few = _box_mask((60, 50), (10, 10, 13, 13))  # 9 pixels: refused before the 10 px side rule can matter
    with pytest.raises(ValueError, match="object_mask has 9 pixel.s. set"):
        prepare_inference_inputs(image, few, _scene(), scene_box=(0, 0, 50, 50), config=PairConfig(min_object_px=1))


def test_inference_object_too_thin_for_the_224px_reference():
    # 2 px wide, 1000 px tall: the released crop is 1 column, padded by 1.2 to 1 x 1198 and squared with
    # 598 columns on its left; 224 px bilinear reads columns (x + 0.5) * 1198 / 224 - 0.5 = ..., 596.1,
    # 601.5, ...: none reads column 598, so nothing of the object is left.
    image = _texture(1000, 30)
    mask = _box_mask((1000, 30), (10, 0, 12, 1000))
    with pytest.raises(ValueError, match="too thin to survive resizing to 224x224"):
        prepare_inference_inputs(image, mask, _scene(), scene_box=(0, 0, 50, 50), config=PairConfig(min_object_px=1))


def _rgba_cutout() -> np.ndarray:
    """A DreamBooth-like RGBA object: a striped reddish ellipse on garbage green, a soft ring (alpha 100)."""
    rng = np.random.default_rng(7)
    rgba = np.zeros((150, 110, 4), np.uint8)
    rgba[..., 1] = 255  # pure green under alpha 0: must never reach the reference
    yy, xx = np.mgrid[0:150, 0:110]
    red = 150 + 60 * ((xx // 6) % 2) + rng.integers(0, 30, (150, 110))
    rgba[..., 0] = np.where((yy // 9) % 3 == 0, 30, red).astype(np.uint8)
    alpha = np.zeros((150, 110), np.uint8)
    cv2.ellipse(alpha, (55, 75), (40, 60), 0, 0, 360, 100, 3)  # anti-aliasing-like soft edge, below 128
    cv2.ellipse(alpha, (55, 75), (40, 60), 0, 0, 360, 255, -1)  # filled: columns 15..95, rows 15..135
    inside = alpha > 128
    rgba[..., 1] = np.where(inside, rgba[..., 0] // 3, 255)
    rgba[..., 2] = np.where(inside, 40, 0)
    rgba[..., 3] = alpha
    return rgba


def _landscape_scene() -> np.ndarray:
    """A 240 x 320 photo-like scene: sky gradient, ground, a few blocks, sensor noise."""
    rng = np.random.default_rng(8)
    scene = np.zeros((240, 320, 3), np.uint8)
    scene[:140] = np.linspace((90, 140, 220), (200, 220, 250), 140).astype(np.uint8)[:, None]
    scene[140:] = (70, 110, 50)
    scene[60:140, 20:90] = (120, 120, 130)
    scene[100:140, 180:300] = (160, 80, 60)
    return np.clip(scene + rng.integers(-8, 9, scene.shape), 0, 255).astype(np.uint8)


def test_inference_on_a_real_looking_rgba_object_and_landscape_scene(tmp_path):
    PIL.Image.fromarray(_rgba_cutout()).save(tmp_path / "object.png")
    placement = np.zeros((240, 320), np.uint8)
    cv2.ellipse(placement, (250, 215), (50, 40), 0, 0, 360, 255, -1)  # columns 200..300, rows 175..239 (clipped)
    PIL.Image.fromarray(np.dstack([placement] * 3)).save(tmp_path / "mask.png")  # an RGB mask, as COCO's
    obj, obj_mask = load_rgba_object(tmp_path / "object.png")
    scene = _landscape_scene()
    scene_mask = load_mask_file(tmp_path / "mask.png", role="scene", shape=(240, 320))
    sample = prepare_inference_inputs(obj, obj_mask, scene, scene_mask=scene_mask, config=PairConfig(image_size=183))

    # Target: released box (200, 175, 300, 239); x1.1 about (250, 207): w 111.1, h 71.5 ->
    # (194, 171, 305, 242 -> 240); x2.0 about (249.5, 205.5): w 224, h 140 -> (137, 135, 361 -> 320,
    # 275 -> 240); w 183 > h 105: y 187 -+ 91 -> (96, 278 -> 240): crop (137, 96, 320, 240), 183 x 144.
    paste = sample.paste
    assert paste.crop_box == (137, 96, 320, 240) and paste.crop_hw == (144, 183)
    assert paste.pad == (19, 0) and paste.padded_side == 183  # (183 - 144) // 2 rows on top, 20 below
    expected = np.zeros((183, 183), np.float32)
    expected[:19] = expected[163:] = -1.0
    expected[19 + 75 : 19 + 144, 57:168] = 1.0  # box (194, 171, 305, 240) in the crop: (57, 75, 168, 144)
    np.testing.assert_array_equal(sample.hint[..., 3], expected)
    collage = _to_uint8(sample.hint[..., :3])
    outside = expected == 0
    np.testing.assert_array_equal(collage[outside], np.pad(scene[96:240, 137:320], ((19, 20), (0, 0), (0, 0)))[outside])
    np.testing.assert_array_equal(collage[94:163, 57:168], cv2.resize(sample.detail, (111, 69)))
    assert (sample.hint[:19, :, :3] == -1).all() and (sample.hint[163:, :, :3] == -1).all()

    # Reference: crop rows 15..134, columns 15..94 (120 x 80), padded by 1.2 to 144 x 96 (12 rows on top),
    # squared to 144; 224 px rows 0..17 read only padding rows (y + 0.5) * 144 / 224 - 0.5 <= 11.
    ref = np.round(sample.reference * 255).astype(np.int32)
    assert (ref[:18] == 255).all() and not (ref[18:40] == 255).all()
    assert (ref[..., 1] <= ref[..., [0, 2]].max(axis=-1)).all()  # no trace of the green under alpha 0
    assert sample.detail.any() and not sample.detail[:18].any()


def test_inference_on_a_portrait_scene_with_the_target_in_the_corner(tmp_path):
    scene = np.transpose(_landscape_scene()[:200, :300], (1, 0, 2)).copy()  # 300 x 200, portrait
    silhouette = np.zeros((300, 200), np.uint8)
    cv2.fillPoly(silhouette, [np.array([(0, 0), (39, 10), (30, 59), (0, 45)], np.int32)], 1)
    labels = PIL.Image.frombytes("P", (200, 300), silhouette.tobytes())
    labels.putpalette([0, 0, 0, 220, 20, 60] + [0] * 762)
    labels.save(tmp_path / "placement.png")  # a palette mask, as video sets store them
    rgba = _rgba_cutout()
    sample = prepare_inference_inputs(
        rgba[..., :3], rgba[..., 3] > 128, scene, scene_mask=load_mask_file(tmp_path / "placement.png", "scene"),
        config=PairConfig(image_size=94),
    )
    # released box (0, 0, 39, 59); x1.1 about (19.5, 29.5): w 44, h 66 -> (int(-2.5), int(-3.5), 41, 62)
    # -> (0, 0, 41, 62); x2.0 about (20.5, 31): w 84, h 126 -> (-21, -32, 62, 94) -> (0, 0, 62, 94);
    # h 94 >= w 62: x 31 -+ 47 -> (-16, 0, 78, 94) -> (0, 0, 78, 94), padded 8 columns left and right
    assert sample.paste.crop_box == (0, 0, 78, 94) and sample.paste.pad == (0, 8)
    expected = np.zeros((94, 94), np.float32)
    expected[:, :8] = expected[:, 86:] = -1.0
    expected[0:62, 8 : 8 + 41] = 1.0
    np.testing.assert_array_equal(sample.hint[..., 3], expected)


# ---------------------------------------------------------------- paste_back


def test_paste_back_round_trip_is_exact():
    scene = _scene()
    sample = prepare_inference_inputs(*_object(), scene, scene_box=(0, 150, 30, 200), config=PairConfig(image_size=78))
    x0, y0, x1, y1 = sample.paste.crop_box
    generated, _ = pad_to_square(scene[y0:y1, x0:x1], 0)
    np.testing.assert_array_equal(paste_back(generated, scene, sample.paste), scene)


@pytest.mark.parametrize("scene_box", [(100, 50, 140, 110), (0, 150, 30, 200), (250, 0, 300, 40)])
def test_paste_back_writes_only_the_crop_interior(scene_box):
    scene = _scene()
    sample = prepare_inference_inputs(*_object(), scene, scene_box=scene_box, config=SMALL)
    generated = _texture(64, 64, seed=9)
    out = paste_back(generated, scene, sample.paste)
    x0, y0, x1, y1 = sample.paste.crop_box
    (top, left), (h, w), side = sample.paste.pad, sample.paste.crop_hw, sample.paste.padded_side
    interior = np.zeros((200, 300), bool)
    interior[y0 + 5 : y1 - 5, x0 + 5 : x1 - 5] = True
    np.testing.assert_array_equal(out[~interior], scene[~interior])  # outside the crop and the 5 px ring
    expected = cv2.resize(generated, (side, side))[top : top + h, left : left + w][5:-5, 5:-5]
    np.testing.assert_array_equal(out[interior].reshape(expected.shape), expected)
    # float [0, 1] and torch CHW give the same result as uint8
    as_float = torch.from_numpy(generated.astype(np.float32) / 255).permute(2, 0, 1)
    np.testing.assert_array_equal(paste_back(as_float, scene, sample.paste), out)


def test_crop_as_generated_is_what_paste_back_puts_back():
    scene, target = _scene(), _texture(200, 300, seed=4)
    sample = prepare_inference_inputs(*_object(), scene, scene_box=(0, 150, 30, 200), config=PairConfig(image_size=78))
    side = sample.paste.padded_side
    crop = crop_as_generated(target, sample.paste, side)  # no resizing: exact
    assert crop.shape == (side, side, 3) and crop.dtype == np.uint8
    x0, y0, x1, y1 = sample.paste.crop_box
    (top, left), (h, w) = sample.paste.pad, sample.paste.crop_hw
    np.testing.assert_array_equal(crop[top : top + h, left : left + w], target[y0:y1, x0:x1])
    assert not crop[:top].any() and not crop[top + h :].any()  # zero padding
    out = paste_back(crop, scene, sample.paste)
    m = sample.paste.margin
    np.testing.assert_array_equal(out[y0 + m : y1 - m, x0 + m : x1 - m], target[y0 + m : y1 - m, x0 + m : x1 - m])
    assert crop_as_generated(target, sample.paste, 64).shape == (64, 64, 3)
    with pytest.raises(ValueError, match=r"image is \(100, 300\) \(H, W\) but the paste info is for a scene of \(200, 300\)"):
        crop_as_generated(target[:100], sample.paste, 64)


def test_paste_back_errors():
    scene = _scene()
    sample = prepare_inference_inputs(*_object(), scene, scene_box=(100, 50, 140, 110), config=SMALL)
    with pytest.raises(ValueError, match="square"):
        paste_back(np.zeros((64, 60, 3), np.uint8), scene, sample.paste)
    with pytest.raises(ValueError, match=r"scene_image has size \(100, 300\)"):
        paste_back(np.zeros((64, 64, 3), np.uint8), scene[:100], sample.paste)
    with pytest.raises(ValueError, match=r"generated_crop is a float image with values in \[-1"):
        paste_back(np.full((64, 64, 3), -1.0, np.float32), scene, sample.paste)


# ---------------------------------------------------------------- tensors


def test_collate_and_sample_to_tensors():
    samples = [prepare_training_pair(*_pair(s), rng=np.random.default_rng(s), config=SMALL, kind=k)
               for s, k in enumerate(("video", "image", "multiview"))]
    batch = collate_samples(samples)
    assert batch["reference"].shape == (3, 3, 224, 224) and batch["reference"].dtype == torch.float32
    assert batch["target"].shape == (3, 3, 64, 64) and batch["hint"].shape == (3, 4, 64, 64)
    assert batch["kind"] == ["video", "image", "multiview"]
    single = sample_to_tensors(samples[1])
    torch.testing.assert_close(single["hint"], batch["hint"][1], rtol=0, atol=0)
    np.testing.assert_array_equal(single["hint"].permute(1, 2, 0).numpy(), samples[1].hint)
    assert torch.utils.data.default_collate([single, single])["kind"] == ["image", "image"]
    with pytest.raises(ValueError, match="at least one"):
        collate_samples([])
    other = prepare_training_pair(*_pair(), rng=np.random.default_rng(0), config=PairConfig(image_size=32))
    with pytest.raises(ValueError, match="different sizes"):
        collate_samples([samples[0], other])


# ---------------------------------------------------------------- perturb_mask


def _blob():
    mask = np.zeros((96, 128), bool)
    cv2.ellipse(mask.view(np.uint8), (60, 50), (30, 18), 20, 0, 360, 1, -1)
    return mask


def test_perturb_mask_contains_mask_and_is_one_region():
    mask = _blob()
    ious = []
    for seed in range(20):
        out = perturb_mask(mask, np.random.default_rng(seed))
        assert out.dtype == bool and out.shape == mask.shape
        assert out[mask].all()
        assert cv2.connectedComponents(out.astype(np.uint8), connectivity=8)[0] == 2
        ious.append(mask.sum() / out.sum())
    assert min(ious) > 0.2 and max(ious) < 1.0 and np.ptp(ious) > 0.2


def test_perturb_mask_is_deterministic():
    a = perturb_mask(_blob(), np.random.default_rng(3))
    np.testing.assert_array_equal(a, perturb_mask(_blob(), np.random.default_rng(3)))
    assert not np.array_equal(a, perturb_mask(_blob(), np.random.default_rng(4)))


def test_perturb_mask_terminates_on_degenerate_masks():
    np.testing.assert_array_equal(perturb_mask(np.ones((40, 40), bool), np.random.default_rng(0)), True)
    corner = np.zeros((40, 40), bool)
    corner[0, 0] = True
    out = perturb_mask(corner, np.random.default_rng(0))
    assert out[0, 0] and cv2.connectedComponents(out.astype(np.uint8))[0] == 2
    with pytest.raises(TypeError, match="Generator"):
        perturb_mask(_blob(), 0)
