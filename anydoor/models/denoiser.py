"""The denoiser: UNet + detail extractor + ID tokens, shared by sampling and training.

AnyDoor (Chen et al., CVPR 2024, Sec. 3.2-3.3): the ID tokens replace the text
embedding in every cross-attention layer, and the detail extractor's
multi-scale outputs are added to the UNet's skip connections and middle
block. `predict_noise` is eps_theta(z_t, t, ID tokens, collage hint).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from torch import nn

from anydoor.models.detail_extractor import CONV_IN_PREFIX

TRAINABLE_RECIPES = ("released", "full_unet")

# UNet parameters trained by the released recipe: the decoder and final layers
# (DESIGN.md "Training recipe"); the encoder and middle block stay SD2.1's.
_UNET_DECODER_PREFIXES = ("up_blocks.", "conv_norm_out.", "conv_out.")


def _hint_downscale(controlnet: ControlNetModel) -> int:
    return 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1)


def detail_residuals(
    controlnet: ControlNetModel,
    hint: torch.Tensor,
    timesteps: torch.Tensor | int | float,
    id_tokens: torch.Tensor,
    latents: torch.Tensor | None = None,
    control_scale: float | Sequence[float] = 1.0,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the detail extractor: the residuals added to the UNet's skips and middle.

    Args:
        controlnet: the detail extractor (`build_detail_extractor`).
        hint: (B, C, H, W) collage hint at image resolution (C = 4 in AnyDoor).
        timesteps: diffusion timesteps, scalar or (B,).
        id_tokens: (B, T, cross_attention_dim) ID tokens.
        latents: the noisy latents; None gives zeros of the latent shape
            (H / 2**(len(conditioning_embedding_out_channels) - 1)), which is
            exact because AnyDoor's branch ignores them (zero ``conv_in``).
        control_scale: a float, or one per output (13 for SD2.1: 12 down + mid).

    Returns:
        (down residuals as a list, mid residual), each times its control scale.
    """
    if not isinstance(hint, torch.Tensor) or hint.ndim != 4:
        raise ValueError(f"hint must be a (B, C, H, W) tensor, got {getattr(hint, 'shape', type(hint).__name__)}")
    channels = controlnet.config.conditioning_channels
    factor = _hint_downscale(controlnet)
    if hint.shape[1] != channels or hint.shape[2] % factor or hint.shape[3] % factor:
        raise ValueError(
            f"hint must have shape (B, {channels}, H, W) with H, W multiples of {factor}, got {tuple(hint.shape)}"
        )
    if latents is None:
        latent_shape = (hint.shape[0], controlnet.config.in_channels, hint.shape[2] // factor, hint.shape[3] // factor)
        latents = torch.zeros(latent_shape, device=hint.device, dtype=hint.dtype)

    down, mid = controlnet(
        latents,
        timesteps,
        encoder_hidden_states=id_tokens,
        controlnet_cond=hint,
        return_dict=False,
    )
    outputs = [*down, mid]
    if isinstance(control_scale, numbers.Real):
        scales = [float(control_scale)] * len(outputs)
    else:
        scales = [float(s) for s in control_scale]
        if len(scales) != len(outputs):
            raise ValueError(
                f"control_scale must be a float or {len(outputs)} floats (one per detail-extractor output), "
                f"got {len(scales)}"
            )
    outputs = [output * scale for output, scale in zip(outputs, scales)]
    return outputs[:-1], outputs[-1]


def detail_residuals_for_timesteps(
    controlnet: ControlNetModel,
    hint: torch.Tensor,
    timesteps: torch.Tensor,
    id_tokens: torch.Tensor,
    control_scale: float | Sequence[float] = 1.0,
    chunk_size: int | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The detail residuals of a whole sampling run, in one batched pass (or a few).

    The detail extractor never sees the noisy latent (DESIGN.md 1c): its
    residuals depend only on the hint, the timestep and the ID tokens, so a
    sampler can compute them for all its timesteps before the loop. Same
    FLOPs as one call per step, but few large batches instead of many small
    ones, which is where a GPU at batch 1 loses its time.

    Args:
        controlnet, hint, id_tokens, control_scale: as in `detail_residuals`
            (hint (B, C, H, W), id_tokens (B, T, D)).
        timesteps: (N,) the timesteps, with the values and dtype the sampling
            loop passes, so the time embedding sees the same input.
        chunk_size: timesteps per detail-extractor pass (each pass is a batch of
            chunk_size * B); None: all N in one pass.

    Returns:
        (down, mid) stacked per timestep: ``down[k][n]`` (B, C_k, H_k, W_k) and
        ``mid[n]`` equal ``detail_residuals(controlnet, hint, timesteps[n],
        id_tokens, control_scale=control_scale)`` up to float rounding.
    """
    if not isinstance(timesteps, torch.Tensor) or timesteps.ndim != 1 or timesteps.numel() == 0:
        raise ValueError(
            f"timesteps must be a non-empty 1-D tensor, got {getattr(timesteps, 'shape', type(timesteps).__name__)}"
        )
    if chunk_size is not None and (not isinstance(chunk_size, numbers.Integral) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if id_tokens.shape[0] != hint.shape[0]:
        raise ValueError(f"id_tokens has {id_tokens.shape[0]} rows but hint has {hint.shape[0]}")
    rows, n = hint.shape[0], timesteps.numel()
    chunk_size = n if chunk_size is None else min(int(chunk_size), n)
    down: list[torch.Tensor] = []
    mid = None
    for start in range(0, n, chunk_size):
        t = timesteps[start : start + chunk_size]
        k = t.numel()
        # Row j * rows + r is (timesteps[start + j], input row r).
        d, m = detail_residuals(
            controlnet,
            hint.repeat(k, 1, 1, 1),
            t.repeat_interleave(rows),
            id_tokens.repeat(k, 1, 1),
            control_scale=control_scale,
        )
        outputs = [*d, m]
        if mid is None:  # allocate once: no concatenation copy of every chunk at the end
            stored = [o.new_empty((n, rows, *o.shape[1:])) for o in outputs]
            down, mid = stored[:-1], stored[-1]
        for store, output in zip([*down, mid], outputs):
            store[start : start + k] = output.unflatten(0, (k, rows))
    return down, mid


def predict_noise(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    latents: torch.Tensor,
    timesteps: torch.Tensor | int | float,
    id_tokens: torch.Tensor,
    hint: torch.Tensor,
    control_scale: float | Sequence[float] = 1.0,
    residuals: tuple[Sequence[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """eps_theta(z_t, t, ID tokens, hint): the UNet conditioned on the ID tokens
    through cross-attention and on the detail residuals through its skips.

    ``residuals`` (from `detail_residuals`) skips the detail-extractor call;
    ``hint`` and ``control_scale`` are then unused.
    """
    if residuals is None:
        residuals = detail_residuals(
            controlnet, hint, timesteps, id_tokens, latents=latents, control_scale=control_scale
        )
    down, mid = residuals
    return unet(
        latents,
        timesteps,
        encoder_hidden_states=id_tokens,
        down_block_additional_residuals=tuple(down),
        mid_block_additional_residual=mid,
        return_dict=False,
    )[0]


def trainable_parameters(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    id_extractor: nn.Module,
    recipe: str = "released",
) -> dict[str, nn.Parameter]:
    """The parameters a training recipe updates, by prefixed name.

    "released" (DESIGN.md "Training recipe"): the detail extractor except its
    zero ``conv_in``, the UNet decoder (``up_blocks``, ``conv_norm_out``,
    ``conv_out``) and the ID projector. "full_unet": the same plus the whole
    UNet, for a UNet that is not pretrained (the embedded default's, before
    the world's base UNet shipped). The ID
    backbone (and the VAE, not passed here) are never trained.

    Names are prefixed ``unet.``, ``controlnet.``, ``id_extractor.``; the
    selection is by name and ignores the current ``requires_grad`` flags.
    """
    if recipe not in TRAINABLE_RECIPES:
        raise ValueError(f"recipe must be one of {TRAINABLE_RECIPES}, got {recipe!r}")
    selected: dict[str, nn.Parameter] = {}
    for name, param in unet.named_parameters():
        if recipe == "full_unet" or name.startswith(_UNET_DECODER_PREFIXES):
            selected[f"unet.{name}"] = param
    for name, param in controlnet.named_parameters():
        if not name.startswith(CONV_IN_PREFIX):
            selected[f"controlnet.{name}"] = param
    for name, param in id_extractor.named_parameters():
        if name.startswith("projector."):
            selected[f"id_extractor.{name}"] = param
    return selected


def set_trainable(
    unet: UNet2DConditionModel,
    controlnet: ControlNetModel,
    id_extractor: nn.Module,
    recipe: str = "released",
) -> dict[str, nn.Parameter]:
    """Set ``requires_grad`` True exactly on `trainable_parameters(...)` and
    False on every other parameter of the three models; return that set."""
    selected = trainable_parameters(unet, controlnet, id_extractor, recipe)
    for module in (unet, controlnet, id_extractor):
        module.requires_grad_(False)
    for param in selected.values():
        param.requires_grad_(True)
    return selected
