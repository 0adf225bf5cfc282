"""The synthetic world's pretraining split: many objects, rendered on the fly.

The embedded world's backbones (DESIGN.md section 4, "The embedded world's
pretrained models") learn from a split of their own: objects drawn from
`PRETRAIN_SEED`, thousands of them, never in the demo's training set, its
benchmark or the calibration set. Every object is an identity of
`anydoor.data.synthetic` (shape, texture, one colour family, a marker); an
image shows it in a random pose and lighting, on one of the world's
backgrounds or on white (the background removed, as the ID extractor and the
identity metrics see objects).

Splits are told apart by the root entropy of their `numpy.random.SeedSequence`:
the data sets of `write_synthetic_dataset` use the data seed (0 for the demo),
the pretraining split `PRETRAIN_SEED`, the calibration set `CALIBRATION_SEED`.
An object is a function of its seed sequence, so no object is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anydoor.data.captions import Attributes, caption, object_attributes
from anydoor.data.synthetic import SyntheticObject, draw_background, make_object, render_object, sample_pose

PRETRAIN_SEED = 7_100_001  # root entropy of the pretraining split's objects and renders
CALIBRATION_SEED = 7_200_001  # root entropy of the calibration set (`write_synthetic_dataset(seed=...)`)
OBJECT_RESOLUTION = 64  # sprite side: the renders below are at most this size, so warping only shrinks
# An object fills its crop like a reference does after the mask box is padded by 1.1-1.5 and squared:
# its radius is 30-45 % of the crop side.
CROP_RADIUS = (0.30, 0.45)
WHITE = 255


def world_objects(count: int, seed: int = PRETRAIN_SEED, resolution: int = OBJECT_RESOLUTION) -> list[SyntheticObject]:
    """`count` object identities of the split whose root entropy is `seed` (ids 1..count)."""
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be a positive int, got {count!r}")
    return [make_object(i + 1, s, resolution) for i, s in enumerate(np.random.SeedSequence(seed).spawn(count))]


@dataclass
class RenderedBatch:
    """Object crops: ``images`` (B, S, S, 3) uint8, ``masks`` (B, S, S) bool, each object's index in the
    bank and the attributes a caption names (background kind included)."""

    images: np.ndarray
    masks: np.ndarray
    objects: np.ndarray
    attributes: list[Attributes]

    def captions(self, rng: np.random.Generator) -> list[str]:
        return [caption(a, rng) for a in self.attributes]


def render_crop(obj: SyntheticObject, rng: np.random.Generator, size: int, white: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """One crop of `obj`: a random pose (any turn, 30-45 % radius, anywhere its disc fits) and
    lighting, on a random background of the world or on white. Returns (uint8 RGB, bool mask, kind)."""
    pose = sample_pose(rng, size, radius_range=CROP_RADIUS)
    rgb, mask = render_object(obj, pose, size)
    if white:
        background, kind = np.full((size, size, 3), WHITE, np.uint8), "white"
    else:
        background, kind = draw_background(size, rng)
    image = background.copy()
    image[mask] = rgb[mask]
    return image, mask, kind


def render_batch(
    bank: list[SyntheticObject], batch_size: int, size: int, rng: np.random.Generator, white_prob: float
) -> RenderedBatch:
    """`batch_size` crops of objects drawn uniformly from `bank`, each on white with probability `white_prob`."""
    if not 0.0 <= white_prob <= 1.0:
        raise ValueError(f"white_prob must be in [0, 1], got {white_prob!r}")
    indices = rng.integers(0, len(bank), batch_size)
    images = np.empty((batch_size, size, size, 3), np.uint8)
    masks = np.empty((batch_size, size, size), bool)
    attributes = []
    for i, k in enumerate(indices):
        images[i], masks[i], kind = render_crop(bank[k], rng, size, white=bool(rng.random() < white_prob))
        attributes.append(object_attributes(bank[k], kind))
    return RenderedBatch(images, masks, indices, attributes)
