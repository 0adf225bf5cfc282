"""Pair preparation: reference crop, collage hint and target crop (DESIGN.md section 1).

A training pair is (reference frame, target frame) of the same object: the
reference becomes a 224x224 background-removed crop for the ID extractor,
the target becomes a square crop around the object's box, and the collage
hint is that crop with the reference's detail map pasted into the box plus a
mask channel (1 box or shape, 0 outside, -1 padding). Inference builds the
same inputs from an object and a scene box, and `paste_back` puts the
generated crop back into the scene.

The geometry is the released code's, to the pixel (DESIGN.md 1d: the
`released_*` rules of `anydoor.data.boxes`), for training and inference
alike, so a converted released checkpoint sees what it was trained on. At
inference the mask channel is built as in training (padding -1, nearest
neighbour), where the released inference ends up with 1 in the padding;
that and the other deliberate departures are listed in docs/ARCHITECTURE.md
("Released geometry").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import cv2
import numpy as np
import torch

from anydoor.data.boxes import (
    box_in_box,
    box_mask,
    check_box,
    mask_box,
    pad_by_ratio,
    pad_to_square,
    released_expand_box,
    released_mask_box,
    released_ratio,
    released_square_box,
)
from anydoor.data.detail_maps import RANDOM_DETAIL_MAPS, check_detail_map_name, detail_map
from anydoor.data.images import as_binary_mask, as_rgb_uint8
from anydoor.data.perturb import perturb_mask

KINDS = ("video", "image", "multiview")
BOX_RULES = ("either", "both")
# Photometric augmentation of the reference: contrast 1 +- 0.2, brightness +- 0.2 of full scale
# (albumentations' RandomBrightnessContrast defaults, which the released training uses).
CONTRAST_LIMIT = 0.2
BRIGHTNESS_LIMIT = 0.2
RATIO_FIELDS = ("ref_pad_range", "target_box_range", "crop_range")


@dataclass(frozen=True)
class PairConfig:
    image_size: int = 512  # S: target/hint side (the embedded default uses 64)
    reference_size: int = 224  # ID extractor input side
    detail_map: str = "hf"  # one of DETAIL_MAP_NAMES
    remove_background: bool = True  # white out the reference background (ID ablation switch)
    # training geometry (DESIGN.md 1d): each ratio is randint(10 lo, 10 hi) / 10, a multiple of 0.1 in
    # [lo, hi); (r, r) pins it to r
    ref_pad_range: tuple[float, float] = (1.1, 1.5)  # reference padding ratio: 1.1, ..., 1.4
    target_box_range: tuple[float, float] = (1.1, 1.2)  # target box expansion: always 1.1
    crop_range: tuple[float, float] = (1.3, 3.0)  # crop around the target box: 1.3, ..., 2.9
    shape_mask_prob: float = 0.7  # mask channel = perturbed true mask instead of the box
    augment: bool = True  # reference flip + brightness/contrast
    # quality checks
    min_area_ratio: float = 0.01  # mask area / image area, reference and target
    max_area_ratio: float = 0.64
    min_box_ratio: float = 0.10  # reference box side / image side
    max_box_ratio: float = 0.8  # expanded target box side / image side
    min_dominant_region: float = 0.9  # largest region / mask area must exceed this
    box_rule: str = "either"  # "either" (generic) or "both" (video loaders): which box sides must fail
    # inference geometry (DESIGN.md "Sampling recipe")
    inference_ref_pad: float = 1.2
    inference_box_ratio: float = 1.1
    inference_crop_ratio: float = 2.0  # the paper's value (the released code draws U[1.5, 3))
    paste_margin: int = 5  # outer ring of the crop that paste_back leaves as the scene
    min_object_px: int = 10  # smallest object side (mask extent) accepted at inference

    def __post_init__(self):
        for name in ("image_size", "reference_size", "min_object_px"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a positive int, got {getattr(self, name)!r}")
        if not (isinstance(self.paste_margin, int) and self.paste_margin >= 0):
            raise ValueError(f"paste_margin must be a non-negative int, got {self.paste_margin!r}")
        check_detail_map_name(self.detail_map)
        if self.box_rule not in BOX_RULES:
            raise ValueError(f"box_rule must be one of {BOX_RULES}, got {self.box_rule!r}")
        for name in RATIO_FIELDS:
            value = tuple(float(v) for v in getattr(self, name))
            if len(value) != 2 or not 1.0 <= value[0] <= value[1]:
                raise ValueError(f"{name} must be (lo, hi) with 1 <= lo <= hi, got {getattr(self, name)!r}")
            if any(abs(10 * v - round(10 * v)) > 1e-6 for v in value):
                raise ValueError(
                    f"{name} must hold multiples of 0.1 (the released draw is randint(10 lo, 10 hi) / 10), "
                    f"got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, value)  # lists from YAML become hashable tuples
        for name in ("inference_ref_pad", "inference_box_ratio", "inference_crop_ratio"):
            if not getattr(self, name) >= 1.0:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("shape_mask_prob", "min_dominant_region"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not 0.0 <= self.min_area_ratio <= self.max_area_ratio <= 1.0:
            raise ValueError(
                f"need 0 <= min_area_ratio <= max_area_ratio <= 1, got {self.min_area_ratio}, {self.max_area_ratio}"
            )
        if not 0.0 <= self.min_box_ratio <= self.max_box_ratio <= 1.0:
            raise ValueError(
                f"need 0 <= min_box_ratio <= max_box_ratio <= 1, got {self.min_box_ratio}, {self.max_box_ratio}"
            )


@dataclass(frozen=True)
class PairDraws:
    """The random choices of one training pair (DESIGN.md 1d), drawn from the sample's generator.

    Pass some or all of them to `prepare_training_pair(..., draws=...)` to pin
    them, e.g. to compare with boxes computed by hand. The shape perturbation
    itself (when `shape_mask`) still draws from the generator.
    """

    ref_pad: float  # reference padding ratio (expand_image_mask)
    target_box: float  # target box expansion (released: always 1.1)
    crop: float  # crop expansion around the target box
    flip: bool = False  # horizontal flip of reference image and mask
    jitter: tuple[float, float] | None = None  # (contrast, brightness) of the reference, or None
    shape_mask: bool = False  # mask channel = perturbed true mask instead of the box

    def __post_init__(self):
        if not (isinstance(self.ref_pad, (int, float)) and self.ref_pad >= 1.0):
            raise ValueError(f"draws.ref_pad must be a number >= 1, got {self.ref_pad!r}")
        for name in ("target_box", "crop"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) > 0):
                raise ValueError(f"draws.{name} must be a positive number, got {getattr(self, name)!r}")
        for name in ("flip", "shape_mask"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"draws.{name} must be a bool, got {getattr(self, name)!r}")
        if self.jitter is not None:
            if not (len(self.jitter) == 2 and all(np.isfinite(v) for v in self.jitter) and self.jitter[0] > 0):
                raise ValueError(f"draws.jitter must be None or (contrast > 0, brightness), got {self.jitter!r}")
            object.__setattr__(self, "jitter", (float(self.jitter[0]), float(self.jitter[1])))


class PairRejected(ValueError):
    """A training pair failed a quality check; `reason` is a short machine-readable tag.

    Reasons: "ref_area_ratio", "ref_dominant_region", "ref_box_size",
    "tar_area_ratio", "tar_box_size", "ref_mask_vanished".
    """

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # picklable across DataLoader workers
        return (type(self), (self.reason, self.args[0]))


@dataclass
class PasteInfo:
    crop_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) of the crop in the scene
    crop_hw: tuple[int, int]  # crop size before padding to square
    pad: tuple[int, int]  # (top, left) padding added to make the crop square
    padded_side: int  # side of the square crop before resizing to S
    scene_hw: tuple[int, int]  # size of the full scene
    margin: int  # outer ring of the crop that paste_back leaves untouched


@dataclass
class AnyDoorSample:
    reference: np.ndarray  # (224, 224, 3) float32 in [0, 1]
    target: np.ndarray  # (S, S, 3) float32 in [-1, 1] (zeros at inference)
    hint: np.ndarray  # (S, S, 4) float32: collage RGB in [-1, 1] + mask channel 1/0/-1
    paste: PasteInfo
    kind: str  # "video" | "image" | "multiview"
    detail: np.ndarray  # (224, 224, 3) uint8 detail map pasted into the collage
    draws: PairDraws | None = None  # the training pair's random choices (None at inference)


# ---------------------------------------------------------------- quality checks


def _fails_box_rule(ratios: tuple[float, float], limit: float, config: PairConfig, smaller: bool) -> bool:
    failing = [(r < limit) if smaller else (r > limit) for r in ratios]
    return any(failing) if config.box_rule == "either" else all(failing)


def _check_area(mask: np.ndarray, config: PairConfig, side: str) -> None:
    ratio = float(mask.mean())
    if not config.min_area_ratio <= ratio <= config.max_area_ratio:
        raise PairRejected(
            f"{side}_area_ratio",
            f"{side} mask covers {ratio:.4f} of the image, outside [{config.min_area_ratio}, {config.max_area_ratio}]",
        )


def _released_box(mask: np.ndarray, side: str):
    """`released_mask_box` of a training mask; a mask it cannot box is a rejected pair, not an error."""
    try:
        return released_mask_box(mask, f"{side} mask")
    except ValueError as err:
        raise PairRejected(f"{side}_box_size", str(err)) from None


def _check_reference(mask: np.ndarray, config: PairConfig) -> None:
    """DESIGN.md: one dominant region, area ratio in range, box not too small (the released box's sides)."""
    _check_area(mask, config, "ref")
    x0, y0, x1, y1 = mask_box(mask)
    # Pixel counts of 8-connected regions; contour polygon areas (the released
    # recipe) undercount thin parts and are 0 for 1-px-wide shapes.
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask[y0:y1, x0:x1].astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    dominant = float(areas.max() / areas.sum())
    if not dominant > config.min_dominant_region:
        raise PairRejected(
            "ref_dominant_region",
            f"reference mask has {areas.size} regions; the largest holds {dominant:.3f} of it "
            f"(must exceed {config.min_dominant_region})",
        )
    x0, y0, x1, y1 = _released_box(mask, "ref")
    ratios = ((y1 - y0) / mask.shape[0], (x1 - x0) / mask.shape[1])
    if _fails_box_rule(ratios, config.min_box_ratio, config, smaller=True):
        raise PairRejected(
            "ref_box_size",
            f"reference box {(x0, y0, x1, y1)} spans (h, w) = ({ratios[0]:.3f}, {ratios[1]:.3f}) of the image; "
            f"minimum {config.min_box_ratio} ({config.box_rule} side fails)",
        )


def _check_target_box(box, image_hw, config: PairConfig) -> None:
    x0, y0, x1, y1 = box
    ratios = ((y1 - y0) / image_hw[0], (x1 - x0) / image_hw[1])
    if _fails_box_rule(ratios, config.max_box_ratio, config, smaller=False):
        raise PairRejected(
            "tar_box_size",
            f"expanded target box {box} spans (h, w) = ({ratios[0]:.3f}, {ratios[1]:.3f}) of the image; "
            f"maximum {config.max_box_ratio} ({config.box_rule} side fails)",
        )


# ---------------------------------------------------------------- reference side


def _brightness_contrast(image: np.ndarray, contrast: float, brightness: float) -> np.ndarray:
    """albumentations' RandomBrightnessContrast on uint8, which the released training applies to the
    whole reference (background too): a float32 table v * contrast + brightness * 255, clipped, truncated."""
    table = np.arange(256, dtype=np.float32)
    table *= contrast
    table += brightness * 255
    return cv2.LUT(image, np.clip(table, 0, 255).astype(np.uint8))


def _prepare_reference(image, mask, pad_ratio: float, config: PairConfig, flip=False, jitter=None, name="mask"):
    """The 224 px reference and its mask, as the released code makes them (DESIGN.md 1d, "Reference").

    Background -> white (when remove_background); crop to `released_mask_box`
    (the mask's last row and column fall outside); `pad_by_ratio` (white,
    mask 0); `pad_to_square`; resize image and 0/255 mask bilinearly to
    reference_size; then flip both and/or jitter the image when asked.
    Returns (uint8 HxWx3 image, uint8 HxW mask): the mask keeps the grey
    edge of its bilinear resize, which the high-frequency map reads as
    mask / 255 like the released code; a bool view is mask > 127.
    """
    x0, y0, x1, y1 = released_mask_box(mask, name)
    crop, crop_mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
    if config.remove_background:
        crop = np.where(crop_mask[:, :, None], crop, np.uint8(255))
    crop, _ = pad_to_square(pad_by_ratio(crop, pad_ratio, 255), 255)
    grey, _ = pad_to_square(pad_by_ratio(crop_mask.astype(np.uint8) * np.uint8(255), pad_ratio, 0), 0)
    n = config.reference_size
    ref, ref_mask = cv2.resize(crop, (n, n)), cv2.resize(grey, (n, n))
    if flip:
        ref, ref_mask = np.ascontiguousarray(ref[:, ::-1]), np.ascontiguousarray(ref_mask[:, ::-1])
    if jitter is not None:
        ref = _brightness_contrast(ref, *jitter)
    if ref_mask.max() <= 127:
        raise PairRejected(
            "ref_mask_vanished",
            f"the object (box {(x0, y0, x1, y1)}) is too thin to survive resizing to {n}x{n}: no pixel of its "
            "reference mask stays at least half set",
        )
    return ref, ref_mask


# ---------------------------------------------------------------- target side


def _to_signed_unit(image: np.ndarray) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1] (in place after one copy: several times faster than x / 127.5 - 1)."""
    out = image.astype(np.float32)
    out *= 1.0 / 127.5
    out -= 1.0
    return out


def _square_resized(array: np.ndarray, pad_value, side: int, interpolation: int) -> np.ndarray:
    padded, _ = pad_to_square(array, pad_value)
    return cv2.resize(padded, (side, side), interpolation=interpolation)


def _clip_to(box, crop):
    """`box` clipped to `crop`. Squaring an odd-sided crop drops a column (or
    row), so a box touching the scene's border can stick out of it by one
    pixel; the released code fails on such a pair (a shape mismatch when
    pasting), here the box loses that pixel."""
    return max(box[0], crop[0]), max(box[1], crop[1]), min(box[2], crop[2]), min(box[3], crop[3])


def _target_and_hint(scene: np.ndarray, crop, box, detail: np.ndarray, mask_channel: np.ndarray, config):
    """Crop the scene, paste the detail map into the box, pad to square (image 0, mask -1), resize to S.

    Images resize bilinearly, the mask channel with nearest neighbour (the
    released training). Returns (target float32 SxSx3 in [-1, 1], hint
    float32 SxSx4, PasteInfo).
    """
    cx0, cy0, cx1, cy1 = crop
    crop_image = scene[cy0:cy1, cx0:cx1]
    bx0, by0, bx1, by1 = box_in_box(_clip_to(box, crop), crop)
    collage = crop_image.copy()
    collage[by0:by1, bx0:bx1] = cv2.resize(detail, (bx1 - bx0, by1 - by0))

    s = config.image_size
    target = _to_signed_unit(_square_resized(crop_image, 0, s, cv2.INTER_LINEAR))
    collage = _to_signed_unit(_square_resized(collage, 0, s, cv2.INTER_LINEAR))
    mask = _square_resized(mask_channel.astype(np.float32), -1.0, s, cv2.INTER_NEAREST)
    hint = np.concatenate([collage, mask[:, :, None]], axis=-1)

    h, w = crop_image.shape[:2]
    paste = PasteInfo(
        crop_box=tuple(crop),
        crop_hw=(h, w),
        pad=((max(h, w) - h) // 2, (max(h, w) - w) // 2),
        padded_side=max(h, w),
        scene_hw=scene.shape[:2],
        margin=config.paste_margin,
    )
    return target, hint, paste


def _check_rng(rng, required: bool) -> None:
    if rng is None and not required:
        return
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


# ---------------------------------------------------------------- random choices of a training pair


def _draw_pair(config: PairConfig, geometry_rng, augment_rng, shape_rng) -> PairDraws:
    """A training pair's random choices (DESIGN.md 1d), each stream from its own generator."""
    target_box = released_ratio(config.target_box_range, geometry_rng)
    crop = released_ratio(config.crop_range, geometry_rng)
    ref_pad = released_ratio(config.ref_pad_range, geometry_rng)
    flip, jitter = False, None
    if config.augment:
        flip = bool(augment_rng.random() < 0.5)
        if augment_rng.random() < 0.5:
            contrast = 1.0 + augment_rng.uniform(-CONTRAST_LIMIT, CONTRAST_LIMIT)
            jitter = (contrast, augment_rng.uniform(-BRIGHTNESS_LIMIT, BRIGHTNESS_LIMIT))
    shape_mask = bool(shape_rng.random() < config.shape_mask_prob)
    return PairDraws(ref_pad=ref_pad, target_box=target_box, crop=crop, flip=flip, jitter=jitter, shape_mask=shape_mask)


def _pin_draws(drawn: PairDraws, draws) -> PairDraws:
    """`draws` (a PairDraws, or a mapping of some of its fields) in place of the drawn values."""
    if isinstance(draws, PairDraws):
        return draws
    if not isinstance(draws, Mapping):
        raise TypeError(f"draws must be a PairDraws or a dict of its fields, got {type(draws).__name__}")
    valid = {f.name for f in fields(PairDraws)}
    unknown = sorted(set(draws) - valid)
    if unknown:
        raise ValueError(f"draws has unknown fields {unknown}; valid: {sorted(valid)}")
    return replace(drawn, **draws)


# ---------------------------------------------------------------- public API


def prepare_training_pair(
    ref_image,
    ref_mask,
    tar_image,
    tar_mask,
    rng: np.random.Generator,
    config: PairConfig = PairConfig(),
    kind: str = "image",
    draws: PairDraws | Mapping | None = None,
) -> AnyDoorSample:
    """Build one training sample from a (reference, target) pair of the same object (DESIGN.md 1d).

    The released training's `process_pairs`: quality checks; the reference
    (`released_mask_box`, padded by the drawn ratio, squared, 224 px,
    flipped and jittered with its mask); its detail map; the target box (the
    mask's released box expanded by the drawn ratio, always 1.1 by default)
    and crop (expanded by the drawn crop ratio, clipped, squared, clipped);
    mask channel = box, or the perturbed true mask; padding -1 with
    nearest-neighbour resizing.

    For single-image sources pass the same image and mask twice. Raises
    `PairRejected` (a ValueError with `.reason`) when the pair fails a
    quality check, ValueError/TypeError for malformed inputs. All randomness
    comes from `rng`, split into independent streams (geometry, augmentation,
    detail map, shape mask), so the detail-map arms of an ablation see the
    same crops for the same seed. `draws` pins some or all of the random
    choices (`PairDraws`); the sample's `draws` says what was used.
    """
    # 1. Check inputs
    ref_image = as_rgb_uint8(ref_image, "ref_image")
    ref_mask = as_binary_mask(ref_mask, "ref_mask", shape=ref_image.shape[:2])
    tar_image = as_rgb_uint8(tar_image, "tar_image")
    tar_mask = as_binary_mask(tar_mask, "tar_mask", shape=tar_image.shape[:2])
    _check_rng(rng, required=True)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    geometry_rng, augment_rng, detail_rng, shape_rng = rng.spawn(4)
    drawn = _draw_pair(config, geometry_rng, augment_rng, shape_rng)
    if draws is not None:
        drawn = _pin_draws(drawn, draws)

    # 2. Quality checks and target geometry (the released box, crop and checks)
    _check_reference(ref_mask, config)
    _check_area(tar_mask, config, "tar")
    scene_hw = tar_image.shape[:2]
    box = released_expand_box(_released_box(tar_mask, "tar"), drawn.target_box, scene_hw)
    _check_target_box(box, scene_hw, config)
    crop = released_square_box(released_expand_box(box, drawn.crop, scene_hw), scene_hw)

    # 3. Reference: background removed, padded, square, augmented with its mask; its detail map
    ref, ref_object = _prepare_reference(
        ref_image, ref_mask, drawn.ref_pad, config, flip=drawn.flip, jitter=drawn.jitter, name="ref_mask"
    )
    detail = detail_map(config.detail_map, ref, ref_object, detail_rng)

    # 4. Mask channel: the box, or a coarse version of the true shape (shape control)
    cx0, cy0, cx1, cy1 = crop
    if drawn.shape_mask:
        mask_channel = perturb_mask(tar_mask[cy0:cy1, cx0:cx1], shape_rng)
    else:
        mask_channel = box_mask(box_in_box(_clip_to(box, crop), crop), (cy1 - cy0, cx1 - cx0))

    # 5. Collage, padding, resizing
    target, hint, paste = _target_and_hint(tar_image, crop, box, detail, mask_channel, config)
    return AnyDoorSample(
        reference=ref.astype(np.float32) / 255.0, target=target, hint=hint, paste=paste, kind=kind, detail=detail,
        draws=drawn,
    )


def prepare_inference_inputs(
    object_image,
    object_mask,
    scene_image,
    scene_mask=None,
    scene_box=None,
    config: PairConfig = PairConfig(),
    rng: np.random.Generator | None = None,
    shape_control: bool = False,
) -> AnyDoorSample:
    """Build the model inputs for inserting an object into a scene (DESIGN.md 1d, "Sampling recipe").

    The released inference's `process_pairs`, deterministic: reference padded
    by `inference_ref_pad` (1.2), no augmentation; target box = the released
    box of `scene_mask` (a `scene_box` counts as the mask that fills it)
    expanded by `inference_box_ratio` (1.1); crop = that box expanded by
    `inference_crop_ratio` (2.0, the paper's value; the released code draws
    it from [1.5, 3)), clipped, squared around the clipped box's centre,
    clipped; the mask channel is the box (no perturbation), or with
    `shape_control` the scene mask itself (AnyDoor's shape-controlled
    insertion, DESIGN.md 1: the model was trained on perturbed true masks in
    that channel, so a silhouette there says the object's shape and pose).
    Its padding is -1 as in training (the released inference has 1 there).

    Give exactly one of `scene_mask` and `scene_box` (x0, y0, x1, y1, inside
    the scene). An all-ones `object_mask` means the whole image is the
    object; objects touching the image border are fine; masks with fewer
    than 10 pixels are refused (the released code would take the whole
    image). `rng` is needed only by the random detail maps (noise,
    shuffle). The returned sample's `target` is all zeros and its `kind` is
    "image" (inference has no data source; the field keeps `collate_samples`
    uniform).
    """
    # 1. Check inputs
    object_image = as_rgb_uint8(object_image, "object_image")
    object_mask = as_binary_mask(object_mask, "object_mask", shape=object_image.shape[:2])
    scene_image = as_rgb_uint8(scene_image, "scene_image")
    scene_hw = scene_image.shape[:2]
    if (scene_mask is None) == (scene_box is None):
        given = "both" if scene_mask is not None else "neither"
        raise ValueError(f"give exactly one of scene_mask and scene_box, got {given}")
    if scene_mask is not None:
        scene_mask = as_binary_mask(scene_mask, "scene_mask", shape=scene_hw)
        target_box = released_mask_box(scene_mask, "scene_mask")
    else:
        scene_box = check_box(scene_box, "scene_box")
        x0, y0, x1, y1 = scene_box
        if x0 < 0 or y0 < 0 or x1 > scene_hw[1] or y1 > scene_hw[0]:
            raise ValueError(f"scene_box {scene_box} is not inside the scene of size (H, W) = {scene_hw}")
        target_box = released_mask_box(box_mask(scene_box, scene_hw), f"scene_box {scene_box}")
    x0, y0, x1, y1 = mask_box(object_mask)
    if min(x1 - x0, y1 - y0) < config.min_object_px:
        raise ValueError(
            f"object_mask's object is {x1 - x0}x{y1 - y0} px (w x h); "
            f"it must be at least {config.min_object_px} px on each side"
        )
    if config.detail_map in RANDOM_DETAIL_MAPS and rng is None:
        raise ValueError(f"detail map {config.detail_map!r} is random: pass rng (a numpy.random.Generator)")
    _check_rng(rng, required=False)
    if not isinstance(shape_control, (bool, np.bool_)):
        raise TypeError(f"shape_control must be a bool, got {type(shape_control).__name__} {shape_control!r}")
    if shape_control and scene_mask is None:
        raise ValueError("shape_control=True needs a scene_mask (the silhouette), got a scene_box")

    # 2. Reference and its detail map
    ref, ref_object = _prepare_reference(object_image, object_mask, config.inference_ref_pad, config, name="object_mask")
    detail = detail_map(config.detail_map, ref, ref_object, rng)

    # 3. Target box and crop; mask channel: the box, or the silhouette (shape control)
    box = released_expand_box(target_box, config.inference_box_ratio, scene_hw)
    crop = released_square_box(released_expand_box(box, config.inference_crop_ratio, scene_hw), scene_hw)
    cx0, cy0, cx1, cy1 = crop
    if shape_control:
        mask_channel = scene_mask[cy0:cy1, cx0:cx1]
    else:
        mask_channel = box_mask(box_in_box(_clip_to(box, crop), crop), (cy1 - cy0, cx1 - cx0))

    # 4. Collage, padding (mask channel -1, as in training), resizing
    target, hint, paste = _target_and_hint(scene_image, crop, box, detail, mask_channel, config)
    return AnyDoorSample(
        reference=ref.astype(np.float32) / 255.0,
        target=np.zeros_like(target),
        hint=hint,
        paste=paste,
        kind="image",
        detail=detail,
    )


def crop_as_generated(image, paste: PasteInfo, side: int) -> np.ndarray:
    """`image`'s crop in the geometry the model generates (the crop of `paste`,
    padded square with 0 and resized to `side`): what `paste_back` would put
    back for a perfect sample, e.g. the true target's crop (uint8 side x side x 3)."""
    image = as_rgb_uint8(image, "image")
    if image.shape[:2] != tuple(paste.scene_hw):
        raise ValueError(f"image is {image.shape[:2]} (H, W) but the paste info is for a scene of {tuple(paste.scene_hw)}")
    x0, y0, x1, y1 = paste.crop_box
    return _square_resized(image[y0:y1, x0:x1], 0, side, cv2.INTER_LINEAR)


def paste_back(generated_crop, scene_image, paste: PasteInfo) -> np.ndarray:
    """Put a generated SxS crop back into the scene; returns a scene-sized uint8 HxWx3 image.

    `generated_crop` is square: uint8, or float in [0, 1] (diffusers'
    `output_type="np"`; map [-1, 1] outputs with (x + 1) / 2 first), numpy
    HxWx3 / torch CxHxW. It is resized to the padded crop side, the padding
    is removed, and only the crop's interior (without its outer
    `paste.margin` px ring) is written: everything outside that interior,
    including the ring, stays exactly the scene.
    """
    scene = as_rgb_uint8(scene_image, "scene_image")
    if tuple(scene.shape[:2]) != tuple(paste.scene_hw):
        raise ValueError(f"scene_image has size {scene.shape[:2]} but paste was built for {tuple(paste.scene_hw)}")
    generated = as_rgb_uint8(generated_crop, "generated_crop")
    if generated.shape[0] != generated.shape[1]:
        raise ValueError(f"generated_crop must be square (S x S), got size {generated.shape[:2]}")
    side, (top, left), (h, w), m = paste.padded_side, paste.pad, paste.crop_hw, paste.margin
    generated = cv2.resize(generated, (side, side))[top : top + h, left : left + w]
    x0, y0, x1, y1 = paste.crop_box
    out = scene.copy()
    # The generated crop's outer ring blends worst with the scene, so it is not pasted.
    out[y0 + m : y1 - m, x0 + m : x1 - m] = generated[m : h - m, m : w - m]
    return out


def sample_to_tensors(sample: AnyDoorSample) -> dict:
    """One sample as channels-first float32 tensors (no batch axis), for torch Datasets."""
    return {
        "reference": torch.from_numpy(np.ascontiguousarray(sample.reference.transpose(2, 0, 1))),
        "target": torch.from_numpy(np.ascontiguousarray(sample.target.transpose(2, 0, 1))),
        "hint": torch.from_numpy(np.ascontiguousarray(sample.hint.transpose(2, 0, 1))),
        "kind": sample.kind,
    }


def collate_samples(samples: list[AnyDoorSample]) -> dict:
    """Batch samples: reference (B,3,224,224), target (B,3,S,S), hint (B,4,S,S) tensors; kind a list."""
    if not samples:
        raise ValueError("collate_samples needs at least one sample, got an empty list")
    sizes = {(s.reference.shape, s.target.shape, s.hint.shape) for s in samples}
    if len(sizes) > 1:
        raise ValueError(f"samples have different sizes (reference, target, hint): {sorted(sizes)}")
    items = [sample_to_tensors(s) for s in samples]
    batch = {key: torch.stack([item[key] for item in items]) for key in ("reference", "target", "hint")}
    batch["kind"] = [item["kind"] for item in items]
    return batch
