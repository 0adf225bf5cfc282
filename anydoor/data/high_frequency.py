"""The high-frequency map pasted into AnyDoor's collage (DESIGN.md section 1, "High-frequency map").

Edges keep the object's fine detail (logos, text, texture) while dropping
flat colour and shading, so the model copies identity without copying the
reference's exact appearance and pose (the paper's Table 5 argument).
"""

from __future__ import annotations

import cv2
import numpy as np

from anydoor.data.images import as_rgb_uint8, as_soft_mask

HF_SIDE = 256  # the released recipe computes the map at 256x256
_ERODE_KERNEL = np.ones((5, 5), np.uint8)


def edge_magnitude(image: np.ndarray) -> np.ndarray:
    """Per-pixel edge strength (HxW uint8): max over channels of (|Sobel x| + |Sobel y|) / 2, saturated."""
    gx = cv2.convertScaleAbs(cv2.Sobel(image, cv2.CV_64F, 1, 0, ksize=3))
    gy = cv2.convertScaleAbs(cv2.Sobel(image, cv2.CV_64F, 0, 1, ksize=3))
    blend = cv2.addWeighted(gx, 0.5, gy, 0.5, 0)
    if blend.ndim == 2:
        return blend
    # Pairwise maxima: numpy's reduction over a 3-wide last axis is ~25x slower on this shape.
    return np.maximum(np.maximum(blend[:, :, 0], blend[:, :, 1]), blend[:, :, 2])


def high_frequency_map(image, mask, threshold: int = 50) -> np.ndarray:
    """The object's high-frequency map, an HxWx3 uint8 image of the same size as `image`.

    The released `sobel(image, mask)` (DESIGN.md 1d): resize the image to
    256x256 (bilinear) and the mask as a [0, 1] float (bilinear), then
    mask > 0.5; erode the mask with a 5x5 kernel of ones twice (pixels beyond
    the image border count as inside, the cv2.erode default, so objects
    touching the border keep their edge there); edge strength = max over
    channels of the 0.5/0.5 blend of |Sobel x| and |Sobel y| (3x3, float64,
    saturated to uint8); times the eroded mask; values below `threshold` set
    to 0; image * (map / 255) per channel in float32, truncated to uint8;
    resized back to the input size (bilinear).

    `mask` may be bool, 0/1, or grey: the reference mask of pair preparation
    is a 0/255 mask resized to 224 px, grey at its edge, read here as
    mask / 255 exactly as the released code feeds it (`as_soft_mask`).
    """
    image = as_rgb_uint8(image, "image")
    mask = as_soft_mask(mask, "mask", shape=image.shape[:2])
    if not 0 <= threshold <= 255:
        raise ValueError(f"threshold must be in [0, 255], got {threshold!r}")
    h, w = image.shape[:2]
    small = cv2.resize(image, (HF_SIDE, HF_SIDE))
    small_mask = (cv2.resize(mask, (HF_SIDE, HF_SIDE)) > 0.5).astype(np.uint8)
    # Eroding keeps the mask's own outline (object against background) out of the map.
    eroded = cv2.erode(small_mask, _ERODE_KERNEL, iterations=2)
    hf = edge_magnitude(small) * eroded
    hf[hf < threshold] = 0
    # float32 and this order of operations: the released arithmetic, so truncation agrees to the level.
    detail = (hf.astype(np.float32)[:, :, None] / 255 * small.astype(np.float32)).astype(np.uint8)
    return cv2.resize(detail, (w, h))
