"""What the identity metrics compare (DESIGN.md section 2).

- The generated region: the placement box of the composite, with the
  background removed (white) outside the placement mask. For a box-only
  benchmark the placement mask is its box, so this is the box alone.
- The reference: the object cropped to its mask's box, white outside the
  mask (the background-removed object, like the paper's RGBA references).

Both are padded to a centred square with white and resized to a backbone's
input side (`square_tensor`), so neither is distorted. The `copy_paste`
baseline (the reference resized into the box) lives here too: it is the
same geometry run backwards.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from anydoor.data.boxes import mask_box, pad_to_square
from anydoor.data.images import as_binary_mask, as_rgb_uint8

WHITE = 255


def generated_region(composite, placement_mask, remove_background: bool = True) -> np.ndarray:
    """The placement box of `composite` (HxWx3), white outside the placement
    mask when `remove_background`; the whole box otherwise (what diversity
    compares across seeds). uint8 (h, w, 3)."""
    image = as_rgb_uint8(composite, "composite")
    mask = as_binary_mask(placement_mask, "placement_mask", shape=image.shape[:2])
    x0, y0, x1, y1 = mask_box(mask)
    region = image[y0:y1, x0:x1].copy()
    if remove_background:
        region[~mask[y0:y1, x0:x1]] = WHITE
    return region


def reference_region(object_image, object_mask) -> np.ndarray:
    """The background-removed reference: the object's mask box, white outside
    the mask. uint8 (h, w, 3)."""
    image = as_rgb_uint8(object_image, "object_image")
    mask = as_binary_mask(object_mask, "object_mask", shape=image.shape[:2])
    x0, y0, x1, y1 = mask_box(mask)
    region = image[y0:y1, x0:x1].copy()
    region[~mask[y0:y1, x0:x1]] = WHITE
    return region


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    # Area averaging when shrinking (no aliasing), bicubic when enlarging.
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def square_tensor(region, size: int) -> torch.Tensor:
    """A region padded to a centred white square and resized to size x size:
    a (3, size, size) float32 tensor in [0, 1], a backbone's input."""
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    square, _ = pad_to_square(as_rgb_uint8(region, "region"), WHITE)
    if square.shape[0] != size:
        square = _resize(square, int(size), int(size))
    return torch.from_numpy(np.ascontiguousarray(square)).permute(2, 0, 1).float() / 255.0


def copy_paste(object_image, object_mask, scene_image, placement_mask) -> np.ndarray:
    """The copy-paste baseline: the background-removed reference resized to
    the placement box (both sides, like a naive paste) and pasted over the
    scene where its resized mask is set. uint8 HxWx3."""
    image = as_rgb_uint8(object_image, "object_image")
    mask = as_binary_mask(object_mask, "object_mask", shape=image.shape[:2])
    scene = as_rgb_uint8(scene_image, "scene_image")
    placement = as_binary_mask(placement_mask, "placement_mask", shape=scene.shape[:2])
    ox0, oy0, ox1, oy1 = mask_box(mask)
    x0, y0, x1, y1 = mask_box(placement)
    width, height = x1 - x0, y1 - y0
    obj = _resize(image[oy0:oy1, ox0:ox1], width, height)
    # Nearest neighbour keeps the mask binary.
    obj_mask = cv2.resize(mask[oy0:oy1, ox0:ox1].astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    composite = scene.copy()
    composite[y0:y1, x0:x1][obj_mask] = obj[obj_mask]
    return composite
