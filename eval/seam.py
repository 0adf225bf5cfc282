"""The seam: how much a composite changes the scene where it should pass through (issue 28).

AnyDoor regenerates the whole crop around the placement box (box x1.1, crop
x2.0, DESIGN.md "Inference geometry") and pastes it back; outside the
expanded box the model should reproduce the scene, but every pixel there goes
through the VAE and the denoiser. A blurred or darkened square around the
insertion is the visible seam. `seam_error` measures it: the mean absolute
difference (uint8 levels, 0-255) between the composite and the scene inside
the crop, outside the expanded box, with both cut and resized as the model
sees the crop (`crop_as_generated`, side `SEAM_SIDE`). The unchanged scene
and copy-paste score 0.
"""

from __future__ import annotations

import numpy as np

from anydoor.data.pairs import PairConfig, crop_as_generated, prepare_inference_inputs

SEAM_SIDE = 64  # the side the crop is measured at (the embedded default's generated crop)


def seam_region(object_image, object_mask, scene_image, scene_mask, side: int = SEAM_SIDE):
    """(paste info, boolean side x side mask of the crop outside the expanded box, padding excluded)."""
    config = PairConfig(image_size=side, detail_map="none", remove_background=False)
    sample = prepare_inference_inputs(object_image, object_mask, scene_image, scene_mask=scene_mask, config=config)
    return sample.paste, sample.hint[:, :, 3] == 0


def seam_error(composite, scene_image, object_image, object_mask, scene_mask, side: int = SEAM_SIDE) -> float:
    """Mean |composite - scene| (uint8 levels) over the crop's ring outside the expanded box."""
    composite, scene = np.asarray(composite), np.asarray(scene_image)
    if composite.shape != scene.shape:
        raise ValueError(f"composite has shape {composite.shape} but the scene has {scene.shape}")
    paste, ring = seam_region(object_image, object_mask, scene, scene_mask, side)
    if not ring.any():
        raise ValueError("the crop has no pixels outside the expanded box (the box fills the scene)")
    diff = np.abs(crop_as_generated(composite, paste, side).astype(np.int16)
                  - crop_as_generated(scene, paste, side).astype(np.int16))
    return float(diff[ring].mean())
