import pickle

import cv2
import numpy as np
import pytest
import torch

from anydoor.data.boxes import pad_to_square
from anydoor.data.detail_maps import DETAIL_MAP_NAMES
from anydoor.data.pairs import (
    AnyDoorSample,
    PairConfig,
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
FIXED = PairConfig(
    image_size=80, target_box_range=(1.0, 1.0), crop_range=(2.0, 2.0), ref_pad_range=(1.0, 1.0),
    shape_mask_prob=0.0, augment=False,
)


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
    # crop: box x2 -> (20, 0, 60, 80), squared to side 80 -> (0, 0, 80, 80); S = 80, so no resizing
    assert sample.paste.crop_box == (0, 0, 80, 80)
    assert sample.paste.crop_hw == (80, 80) and sample.paste.pad == (0, 0) and sample.paste.padded_side == 80
    np.testing.assert_array_equal(_to_uint8(sample.target), tar[0:80, 0:80])
    np.testing.assert_array_equal(sample.hint[..., 3], _box_mask((80, 80), (30, 20, 50, 60)).astype(np.float32))
    collage = _to_uint8(sample.hint[..., :3])
    outside = ~_box_mask((80, 80), (30, 20, 50, 60))
    np.testing.assert_array_equal(collage[outside], tar[0:80, 0:80][outside])
    np.testing.assert_array_equal(collage[20:60, 30:50], cv2.resize(sample.detail, (20, 40)))
    # reference: the 20x40 object padded to a 40x40 square with white, so white left and right columns
    assert (sample.reference[:, :50] == 1.0).all() and (sample.reference[:, -50:] == 1.0).all()


def test_shape_mask_contains_true_mask():
    ref, ref_mask, tar, _ = _pair()
    tar_mask = _cross()
    config = PairConfig(**{**FIXED.__dict__, "shape_mask_prob": 1.0})
    masks = []
    for seed in range(4):
        sample = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(seed), config)
        x0, y0, x1, y1 = sample.paste.crop_box
        assert sample.paste.padded_side == 80 and (x1 - x0, y1 - y0) == (80, 80)
        channel = sample.hint[..., 3]
        assert set(np.unique(channel)) <= {0.0, 1.0}
        assert (channel[tar_mask[y0:y1, x0:x1]] == 1.0).all()
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
    for sample in (removed, kept):  # the ratio padding is white either way
        assert (sample.reference[:3] == 1.0).all()


def test_augmentation_flips_or_jitters_reference_only():
    ref, ref_mask, tar, tar_mask = _pair()
    plain = prepare_training_pair(ref, ref_mask, tar, tar_mask, np.random.default_rng(0), FIXED)
    augmented = [
        prepare_training_pair(
            ref, ref_mask, tar, tar_mask, np.random.default_rng(s), PairConfig(**{**FIXED.__dict__, "augment": True})
        )
        for s in range(6)
    ]
    for sample in augmented:
        np.testing.assert_array_equal(sample.target, plain.target)
        assert (sample.reference[:, :50] == 1.0).all()  # background stays white under jitter
    assert any(not np.array_equal(s.reference, plain.reference) for s in augmented)


@pytest.mark.parametrize("name", DETAIL_MAP_NAMES)
def test_each_detail_variant_is_pasted_into_the_box(name):
    config = PairConfig(**{**FIXED.__dict__, "detail_map": name})
    sample = prepare_training_pair(*_pair()[:2], *_pair()[:2], rng=np.random.default_rng(0), config=config)
    collage = _to_uint8(sample.hint[..., :3])
    np.testing.assert_array_equal(collage[20:60, 30:50], cv2.resize(sample.detail, (20, 40)))
    if name == "none":
        assert (sample.hint[20:60, 30:50, :3] == -1.0).all()
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
    # box (100, 50, 140, 110), w 40 h 60 -> x1.1: (98, 47, 142, 113) -> x2: (76, 14, 164, 146) -> square 132
    config = PairConfig(image_size=132)
    sample = prepare_inference_inputs(*_object(), _scene(), scene_box=(100, 50, 140, 110), config=config)
    assert sample.paste.crop_box == (54, 14, 186, 146)
    assert sample.paste.crop_hw == (132, 132) and sample.paste.pad == (0, 0) and sample.paste.scene_hw == (200, 300)
    np.testing.assert_array_equal(sample.hint[..., 3], _box_mask((132, 132), (44, 33, 88, 99)).astype(np.float32))
    assert not sample.target.any() and sample.target.shape == (132, 132, 3)
    collage = _to_uint8(sample.hint[..., :3])
    outside = sample.hint[..., 3] == 0
    np.testing.assert_array_equal(collage[outside], _scene()[14:146, 54:186][outside])


def test_inference_geometry_by_hand_border_box():
    # box (0, 150, 30, 200) -> x1.1 clipped (0, 148, 32, 200) -> x2, square 104, clipped: (0, 122, 68, 200)
    config = PairConfig(image_size=78)
    sample = prepare_inference_inputs(*_object(), _scene(), scene_box=(0, 150, 30, 200), config=config)
    paste = sample.paste
    assert paste.crop_box == (0, 122, 68, 200)
    assert paste.crop_hw == (78, 68) and paste.pad == (0, 5) and paste.padded_side == 78
    channel = sample.hint[..., 3]
    assert (channel[:, :5] == -1).all() and (channel[:, 73:] == -1).all()
    np.testing.assert_array_equal(channel[:, 5:73], _box_mask((78, 68), (0, 26, 32, 78)).astype(np.float32))
    assert (sample.hint[:, :5, :3] == -1).all()  # black padding


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
    config = PairConfig(image_size=132)
    silhouette = np.zeros((200, 300), bool)
    silhouette[50:110, 115:125] = True  # vertical bar, x 115..125
    silhouette[75:85, 100:140] = True  # horizontal bar spanning the box's width
    boxed = prepare_inference_inputs(*_object(), _scene(), scene_mask=silhouette, config=config)
    shaped = prepare_inference_inputs(*_object(), _scene(), scene_mask=silhouette, config=config, shape_control=True)
    assert shaped.paste == boxed.paste  # same geometry: only the mask channel changes
    np.testing.assert_array_equal(shaped.hint[..., :3], boxed.hint[..., :3])
    np.testing.assert_array_equal(shaped.reference, boxed.reference)
    np.testing.assert_array_equal(shaped.hint[..., 3], silhouette[14:146, 54:186].astype(np.float32))
    assert boxed.hint[..., 3].sum() > shaped.hint[..., 3].sum() > 0


def test_inference_shape_control_bad_inputs():
    image, mask = _object()
    with pytest.raises(ValueError, match="shape_control=True needs a scene_mask"):
        prepare_inference_inputs(image, mask, _scene(), scene_box=(10, 10, 60, 60), config=SMALL, shape_control=True)
    scene_mask = _box_mask((200, 300), (10, 10, 60, 60))
    with pytest.raises(TypeError, match="shape_control must be a bool, got str 'yes'"):
        prepare_inference_inputs(image, mask, _scene(), scene_mask=scene_mask, config=SMALL, shape_control="yes")


def test_inference_reference_is_padded_by_1_2_without_augmentation():
    image, mask = _object()  # object 30 wide, 50 tall -> padded 36 x 60 -> square 60
    sample = prepare_inference_inputs(image, mask, _scene(), scene_box=(10, 10, 60, 60), config=SMALL)
    obj = np.round(sample.reference * 255).astype(np.uint8)
    rows = np.flatnonzero((obj != 255).any(axis=(1, 2)))
    assert abs(rows[0] - 224 * 5 / 60) <= 2 and abs(rows[-1] + 1 - 224 * 55 / 60) <= 2


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
