"""Detail extractor: a ControlNet-style copy of the UNet encoder reading the collage hint.

AnyDoor (Chen et al., CVPR 2024, Sec. 3.2): a trainable copy of the UNet
encoder reads the 4-channel collage (scene crop with the object's
high-frequency map pasted into the box, plus a mask channel); its
multi-scale outputs (zero-initialised convs) join the UNet's skip
connections and middle block.

Unlike a plain ControlNet, the released branch never sees the noisy latent:
its first input block is *replaced* by the hint embedding (DESIGN.md 1c). In
diffusers terms this is a `ControlNetModel` whose ``conv_in`` (the conv on
the latent) is zero and frozen, so ``conv_in(latent) + hint_embedding`` is
the hint embedding alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

# Parameter-name prefix of the latent conv, excluded from training by name.
CONV_IN_PREFIX = "conv_in."


def zero_conv_in(controlnet: ControlNetModel) -> ControlNetModel:
    """Zero the ControlNet's latent conv and freeze it, in place (DESIGN.md 1c).

    `ControlNetModel.from_unet` copies ``conv_in`` from the UNet, and the
    released checkpoint holds non-zero tensors there that its forward never
    uses: both must end at zero for the branch to ignore the noisy latent.
    """
    if not isinstance(controlnet, ControlNetModel):
        raise TypeError(f"controlnet must be a diffusers ControlNetModel, got {type(controlnet).__name__}")
    with torch.no_grad():
        controlnet.conv_in.weight.zero_()
        if controlnet.conv_in.bias is not None:
            controlnet.conv_in.bias.zero_()
    controlnet.conv_in.requires_grad_(False)
    return controlnet


def build_detail_extractor(
    unet: UNet2DConditionModel,
    conditioning_embedding_out_channels: Sequence[int] = (16, 32, 96, 256),
    conditioning_channels: int = 4,
) -> ControlNetModel:
    """AnyDoor's detail extractor: the UNet encoder copied into a ControlNet.

    The encoder, middle block and time embedding are copied from ``unet``
    (the released model starts from SD2.1's encoder), the hint embedding and
    zero convs are freshly initialised, and ``conv_in`` is zeroed and frozen
    (`zero_conv_in`). The hint embedding downsamples by
    ``2 ** (len(conditioning_embedding_out_channels) - 1)``: (16, 32, 96, 256)
    maps 512 px hints to SD2.1's 64x64 latents, (16, 32, 32) maps the embedded
    default's 64 px hints to 16x16 latents.
    """
    if not isinstance(unet, UNet2DConditionModel):
        raise TypeError(f"unet must be a diffusers UNet2DConditionModel, got {type(unet).__name__}")
    channels = tuple(conditioning_embedding_out_channels)
    if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
        raise ValueError(
            "conditioning_embedding_out_channels must be a non-empty sequence of positive ints, "
            f"got {conditioning_embedding_out_channels!r}"
        )
    if not isinstance(conditioning_channels, int) or conditioning_channels < 1:
        raise ValueError(f"conditioning_channels must be a positive int, got {conditioning_channels!r}")
    controlnet = ControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=channels,
        conditioning_channels=conditioning_channels,
        load_weights_from_unet=True,
    )
    return zero_conv_in(controlnet)
