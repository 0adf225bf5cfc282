"""Coarse versions of a true mask, for shape-controlled insertion (DESIGN.md, "Preparing a training pair").

With probability 0.7 the collage's mask channel is a perturbed target mask
instead of the box, so the model learns to follow a rough user-drawn
silhouette.
"""

from __future__ import annotations

import cv2
import numpy as np

from anydoor.data.boxes import mask_box
from anydoor.data.images import as_binary_mask

IOU_RANGE = (0.3, 0.99)
KERNEL_RANGE = (3, 10)  # kernel sides in px, inclusive
DILATE_PROB = 0.75  # erosions only undo earlier dilations (the true mask is kept), so dilate more often
MAX_STEPS = 200  # bounds the loop when the target IoU cannot be reached (e.g. a mask filling the image)
_SHAPES = (cv2.MORPH_RECT, cv2.MORPH_ELLIPSE)


def _kernel(u_shape: float, u_w: float, u_h: float) -> np.ndarray:
    """Rectangular or elliptical kernel, sides uniform in KERNEL_RANGE, from three U(0, 1) draws."""
    lo, hi = KERNEL_RANGE
    kw, kh = lo + int(u_w * (hi - lo + 1)), lo + int(u_h * (hi - lo + 1))
    return cv2.getStructuringElement(_SHAPES[int(u_shape * 2)], (kw, kh))


def _sub_rect(bounds: tuple[int, int, int, int], u: np.ndarray) -> tuple[int, int, int, int]:
    """Sub-rectangle (x0, y0, x1, y1) of `bounds`, at least half of it on each side, from four U(0, 1) draws."""
    x0, y0, x1, y1 = bounds
    w, h = x1 - x0, y1 - y0
    rw = (w + 1) // 2 + int(u[0] * (w - (w + 1) // 2 + 1))
    rh = (h + 1) // 2 + int(u[1] * (h - (h + 1) // 2 + 1))
    rx = x0 + int(u[2] * (w - rw + 1))
    ry = y0 + int(u[3] * (h - rh + 1))
    return rx, ry, rx + rw, ry + rh


def _component_with_most_of(mask: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """The connected component of `seg` holding the most pixels of `mask` (ties: the larger one)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(seg, connectivity=8)
    if count <= 2:  # background + one region
        return seg.astype(bool)
    overlap = np.bincount(labels[mask], minlength=count)[1:]
    areas = stats[1:, cv2.CC_STAT_AREA]
    best = 1 + int(np.lexsort((areas, overlap))[-1])
    return labels == best


def perturb_mask(mask, rng: np.random.Generator) -> np.ndarray:
    """A coarse, connected superset of `mask` with IoU about U(0.3, 0.99) to it (bool HxW).

    Draws a target IoU from U(0.3, 0.99), then repeatedly dilates or erodes a
    random sub-rectangle (around the current region) with a random
    rectangular or elliptical kernel of 3-10 px per side, taking the union
    with the true mask after each step, until the IoU falls under the target
    or MAX_STEPS steps have run. Since the result always contains the true
    mask, IoU = |mask| / |result|. Finally keeps one connected region: the
    one holding most of the true mask (DESIGN.md says "the largest"; the two
    coincide unless an erosion splits off a larger piece of added background,
    and this choice keeps a connected true mask inside).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    mask = as_binary_mask(mask, "mask")
    h, w = mask.shape
    target_iou = rng.uniform(*IOU_RANGE)
    # One draw for the whole loop: [rect (4), dilate?, kernel shape, kernel w, kernel h] per step.
    draws = rng.random((MAX_STEPS, 8))
    true = mask.astype(np.uint8)
    true_area = area = int(np.count_nonzero(true))
    seg = true.copy()
    x0, y0, x1, y1 = mask_box(mask)  # always contains seg
    reach = KERNEL_RANGE[1] // 2 + 1  # how far one dilation can grow the region
    for u in draws:
        # Work near the current region: elsewhere a dilation or erosion changes nothing.
        bounds = (max(x0 - reach, 0), max(y0 - reach, 0), min(x1 + reach, w), min(y1 + reach, h))
        rx0, ry0, rx1, ry1 = _sub_rect(bounds, u[:4])
        dilate = u[4] < DILATE_PROB
        window = seg[ry0:ry1, rx0:rx1]
        before = cv2.countNonZero(window)
        # In place on the view: several times faster than numpy temporaries on large windows.
        (cv2.dilate if dilate else cv2.erode)(window, _kernel(*u[5:]), dst=window)
        cv2.bitwise_or(window, true[ry0:ry1, rx0:rx1], dst=window)
        area += cv2.countNonZero(window) - before
        if dilate:  # only a dilation can grow the region's box
            bx, by, bw, bh = cv2.boundingRect(window)
            x0, y0 = min(x0, rx0 + bx), min(y0, ry0 + by)
            x1, y1 = max(x1, rx0 + bx + bw), max(y1, ry0 + by + bh)
        if true_area / area < target_iou or area == h * w:
            break
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = _component_with_most_of(mask[y0:y1, x0:x1], seg[y0:y1, x0:x1])
    return out
