"""Scene crops of the synthetic world with captions: what the world's VAE and base UNet learn from.

SD2.1's VAE and UNet (DESIGN.md "Training recipe") were trained on web
images and their captions before AnyDoor fine-tuned anything; the embedded
world's stand-ins (`anydoor pretrain-world`, stages ``vae`` and ``base_unet``)
are trained on this module's crops. A crop is a scene of the world
(`synthetic.SCENE_SIZE`-like side, one of its backgrounds) with one object of
the pretraining split (`world_views.world_objects`) or none, cut the way the
pipeline cuts its target crops (the object's box expanded by 1.1-3.0 and
squared) or, without an object, a random square, and resized to the model's
side. Its caption names the object's attributes and the background
(`captions.caption`), or only the background ("a noisy background").

Every draw goes through the caller's `numpy.random.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from anydoor.data.captions import BACKGROUND_WORDS, Attributes, caption, object_attributes
from anydoor.data.synthetic import RADIUS_ONE_OBJECT, SyntheticObject, draw_background, render_object, sample_pose

SCENE_SIZE = 96  # the demo's scenes (`eval.demo.SYNTH_SETTINGS`)
BOX_EXPANSION = (1.1, 3.0)  # the object's box side x this, squared: inference 1.1 x 2.0, training 1.3-3.0
EMPTY_CROP_SIDE = (0.35, 1.0)  # a crop without an object: side as a fraction of the scene
EMPTY_PROB = 0.25  # share of crops without an object


def background_caption(kind: str) -> str:
    """The caption of a scene without an object, e.g. "a noisy background"."""
    return f"a {BACKGROUND_WORDS[kind]} background"


@dataclass
class SceneCrops:
    """``images`` (B, S, S, 3) uint8, ``masks`` (B, S, S) bool (the object's pixels; all False without one),
    ``captions`` and each crop's `captions.Attributes` (None without an object)."""

    images: np.ndarray
    masks: np.ndarray
    captions: list[str]
    attributes: list[Attributes | None]

    def tensors(self):
        """(images in [-1, 1] as (B, 3, S, S) float32, masks as (B, 1, S, S) float32)."""
        import torch

        images = torch.from_numpy(self.images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        return images, torch.from_numpy(self.masks).float()[:, None]


def _square_around(mask: np.ndarray, ratio: float, scene: int) -> tuple[int, int, int]:
    """(y, x, side): the mask's box, its longer side x `ratio`, centred on the box and shifted inside the scene."""
    ys, xs = np.nonzero(mask)
    side = min(scene, max(8, int(round(ratio * max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)))))
    cy, cx = (ys.min() + ys.max() + 1) / 2.0, (xs.min() + xs.max() + 1) / 2.0
    y = int(np.clip(round(cy - side / 2.0), 0, scene - side))
    x = int(np.clip(round(cx - side / 2.0), 0, scene - side))
    return y, x, side


def _resize(array: np.ndarray, size: int, interpolation: int) -> np.ndarray:
    return cv2.resize(array, (size, size), interpolation=interpolation)


def scene_crop(bank: list[SyntheticObject], rng: np.random.Generator, size: int,
               empty_prob: float = EMPTY_PROB) -> tuple[np.ndarray, np.ndarray, str, Attributes | None]:
    """One crop: (uint8 RGB size x size, bool object mask, caption, attributes or None)."""
    background, kind = draw_background(SCENE_SIZE, rng)
    if rng.random() < empty_prob:
        side = int(rng.integers(round(EMPTY_CROP_SIDE[0] * SCENE_SIZE), SCENE_SIZE + 1))
        y, x = (int(v) for v in rng.integers(0, SCENE_SIZE - side + 1, 2))
        crop = background[y : y + side, x : x + side]
        mask = np.zeros((size, size), bool)
        text, attributes = background_caption(kind), None
    else:
        obj = bank[int(rng.integers(len(bank)))]
        rgb, object_mask = render_object(obj, sample_pose(rng, SCENE_SIZE, radius_range=RADIUS_ONE_OBJECT), SCENE_SIZE)
        scene = background.copy()
        scene[object_mask] = rgb[object_mask]
        y, x, side = _square_around(object_mask, rng.uniform(*BOX_EXPANSION), SCENE_SIZE)
        crop = scene[y : y + side, x : x + side]
        mask = _resize(object_mask[y : y + side, x : x + side].astype(np.uint8), size, cv2.INTER_NEAREST) > 0
        attributes = object_attributes(obj, kind)
        text = caption(attributes, rng)
    interpolation = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    image = _resize(np.ascontiguousarray(crop), size, interpolation)
    if rng.random() < 0.5:
        image, mask = image[:, ::-1], mask[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask), text, attributes


def scene_crops(bank: list[SyntheticObject], batch_size: int, size: int, rng: np.random.Generator,
                empty_prob: float = EMPTY_PROB) -> SceneCrops:
    """`batch_size` crops of `scene_crop`."""
    if not 0.0 <= empty_prob <= 1.0:
        raise ValueError(f"empty_prob must be in [0, 1], got {empty_prob!r}")
    images = np.empty((batch_size, size, size, 3), np.uint8)
    masks = np.empty((batch_size, size, size), bool)
    captions, attributes = [], []
    for i in range(batch_size):
        images[i], masks[i], text, attrs = scene_crop(bank, rng, size, empty_prob)
        captions.append(text)
        attributes.append(attrs)
    return SceneCrops(images, masks, captions, attributes)
