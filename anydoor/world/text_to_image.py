"""Text-to-image with the world's base model: what `anydoor world-sample` draws.

The world VAE and caption-conditioned base UNet (`anydoor.world`) in
diffusers' own `StableDiffusionPipeline`, fed the world CLIP text tower's
token states (`models.caption_encoder`) as ``prompt_embeds`` and the empty
caption's as ``negative_prompt_embeds``, with the released DDIM 50 schedule
(`presets.sampling_scheduler`, v-prediction). A person can look at the
samples and see whether the base draws what a caption says; AnyDoor's arms
start from this UNet.
"""

from __future__ import annotations

from os import PathLike

import numpy as np
import torch

DEFAULT_GUIDANCE = 5.0  # SD's usual scale; the released AnyDoor samples at 5.0 too


def load_text_to_image(root: str | PathLike | None = None):
    """(diffusers `StableDiffusionPipeline` of the shipped world VAE and base UNet, `CaptionEncoder`)."""
    from diffusers import StableDiffusionPipeline

    from anydoor import world
    from anydoor.models.caption_encoder import world_caption_encoder
    from anydoor.presets import TINY_PREDICTION_TYPE, sampling_scheduler

    pipe = StableDiffusionPipeline(
        vae=world.load_vae(root), text_encoder=None, tokenizer=None, unet=world.load_base_unet(root),
        scheduler=sampling_scheduler(TINY_PREDICTION_TYPE), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe, world_caption_encoder(root)


def check_size(size: int) -> int:
    """`size` if it is a positive multiple of 8 (the VAE's x4 and the UNet's x2 downsampling), else a ValueError."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8:
        raise ValueError(f"size must be a positive multiple of 8 (pixels), got {size!r}")
    return size


@torch.no_grad()
def sample_captions(pipe, encoder, captions: list[str], seed: int = 0, guidance_scale: float = DEFAULT_GUIDANCE,
                    num_inference_steps: int = 50, size: int = 64, batch_size: int = 64) -> np.ndarray:
    """One sample per caption: (N, size, size, 3) uint8. Sample i's noise depends on (seed, i) only."""
    if not captions:
        raise ValueError("captions is empty: give at least one caption")
    check_size(size)
    images = []
    for start in range(0, len(captions), batch_size):
        chunk = list(captions[start : start + batch_size])
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + start + i) for i in range(len(chunk))]
        out = pipe(
            prompt_embeds=encoder(chunk), negative_prompt_embeds=encoder.unconditional(len(chunk)),
            guidance_scale=guidance_scale, num_inference_steps=num_inference_steps, height=size, width=size,
            generator=generators, output_type="np",
        ).images
        images.append(np.round(np.clip(out, 0.0, 1.0) * 255).astype(np.uint8))
    return np.concatenate(images)


def image_grid(images: np.ndarray, columns: int, scale: int = 1) -> np.ndarray:
    """(N, S, S, 3) uint8 images tiled row-major into one uint8 image with 2 px white gaps."""
    n, side = len(images), images.shape[1] * scale
    rows = -(-n // columns)
    gap = 2
    grid = np.full((rows * side + (rows - 1) * gap, columns * side + (columns - 1) * gap, 3), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        big = image.repeat(scale, axis=0).repeat(scale, axis=1)
        grid[r * (side + gap) : r * (side + gap) + side, c * (side + gap) : c * (side + gap) + side] = big
    return grid
