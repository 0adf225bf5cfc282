"""The high-frequency map pasted into AnyDoor's collage (DESIGN.md section 1, "High-frequency map").

Edges keep the object's fine detail (logos, text, texture) while dropping
flat colour and shading, so the model copies identity without copying the
reference's exact appearance and pose (the paper's Table 5 argument).
"""

from __future__ import annotations

import cv2
import numpy as np

from anydoor.data.images import as_binary_mask, as_rgb_uint8

HF_SIDE = 256  # the released recipe computes the map at 256x256
_ERODE_KERNEL = np.ones((5, 5), np.uint8)


def edge_magnitude(image: np.ndarray) -> np.ndarray:
    """Per-pixel edge strength (HxW uint8): max over channels of (|Sobel x| + |Sobel y|) / 2, saturated."""
    per_channel = []
    for c in range(image.shape[2]):
        gx = cv2.convertScaleAbs(cv2.Sobel(image[:, :, c], cv2.CV_64F, 1, 0, ksize=3))
        gy = cv2.convertScaleAbs(cv2.Sobel(image[:, :, c], cv2.CV_64F, 0, 1, ksize=3))
        per_channel.append(cv2.addWeighted(gx, 0.5, gy, 0.5, 0))
    return np.max(per_channel, axis=0)


def high_frequency_map(image, mask, threshold: int = 50) -> np.ndarray:
    """The object's high-frequency map, an HxWx3 uint8 image of the same size as `image`.

    Steps (DESIGN.md): resize image and mask to 256x256 (image bilinear, the
    cv2.resize default; mask nearest, then > 0.5); erode the mask with a 5x5
    kernel of ones twice (pixels beyond the image border count as inside, the
    cv2.erode default, so objects touching the border keep their edge there);
    edge strength = max over channels of the 0.5/0.5 blend of |Sobel x| and
    |Sobel y| (3x3, float64, saturated to uint8); times the eroded mask;
    values below `threshold` set to 0; image * (map / 255) per channel,
    truncated to uint8; resized back to the input size (bilinear).
    """
    image = as_rgb_uint8(image, "image")
    mask = as_binary_mask(mask, "mask", shape=image.shape[:2])
    if not 0 <= threshold <= 255:
        raise ValueError(f"threshold must be in [0, 255], got {threshold!r}")
    h, w = image.shape[:2]
    small = cv2.resize(image, (HF_SIDE, HF_SIDE))
    small_mask = cv2.resize(mask.astype(np.uint8), (HF_SIDE, HF_SIDE), interpolation=cv2.INTER_NEAREST)
    # Eroding keeps the mask's own outline (object against background) out of the map.
    eroded = cv2.erode((small_mask > 0.5).astype(np.uint8), _ERODE_KERNEL, iterations=2)
    hf = edge_magnitude(small) * eroded
    hf[hf < threshold] = 0
    detail = (small * (hf[:, :, None] / 255.0)).astype(np.uint8)
    return cv2.resize(detail, (w, h))
