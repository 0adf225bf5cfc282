"""Model presets: the embedded default (tiny, random init) and the full-size configs.

DESIGN.md section 4: no pretrained weights can be downloaded where this
project is built and tested, so the embedded default builds the real
classes at miniature size (64 px images, 16x16x4 latents, UNet + detail
extractor about 1.3M parameters) and trains them briefly on synthetic data.
The full-size configs describe the released model (SD2.1-base + DINOv2
ViT-g/14 + detail extractor); built on the meta device they give its
parameter counts without allocating memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel

from anydoor.models.detail_extractor import build_detail_extractor
from anydoor.models.id_extractors import ID_EXTRACTOR_NAMES, DINOv2IDExtractor, build_id_extractor

TINY_IMAGE_SIZE = 64  # embedded default's image side (the released model: 512)
ID_IMAGE_SIZE = 224  # the ID extractor's input side, at both sizes
DINOV2_GIANT_IMAGE_SIZE = 518  # the released DINOv2-g weights carry a 37x37 grid
TINY_CROSS_ATTENTION_DIM = 64
TINY_CONDITIONING_CHANNELS = (16, 32, 32)  # x4 hint downsampling: 64 px -> 16x16 latents
# GroupNorm groups of the tiny UNet (and so of its detail extractor). SD's 32 groups over 320+ channels
# normalise 10+ channels together; over the tiny models' 32 channels they would
# be per-channel instance norm, which on 16x16 latents removes each sample's
# per-channel mean and scale, so at high noise the UNet cannot tell the noise's
# own statistics from the signal's and predicts eps worse than the trivial
# predictor (measured: eps-MSE at t=981 0.0107 with 32 groups vs 0.0075 with 8
# after the same 400 steps). 8 groups keep 4+ channels per group, like SD.
# The tiny VAE keeps 32: on images, 8 groups reconstructed worse (17.9 vs 18.7 dB).
TINY_NORM_GROUPS = 8
# What the tiny UNet predicts. SD2.1-base (and so the released AnyDoor)
# predicts eps; the tiny stand-in predicts v (Salimans & Ho 2022; SD2.1-768's
# choice). With eps, x0 = (z_t - sigma eps) / alpha multiplies the tiny
# model's eps error by 1/alpha ~ 15 at t=981, so its first DDIM steps commit to
# x0 estimates worse than the latent mean and the 50-step chain never recovers
# (measured on the embedded default after 600 steps: generated-crop MSE 0.21
# with eps vs 0.13 with v, the same data, steps and seed).
PREDICTION_TYPES = ("epsilon", "v_prediction")
TINY_PREDICTION_TYPE = "v_prediction"

# SD2.1's noise schedule (DESIGN.md "Training recipe" / "Sampling recipe").
_SD21_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def tiny_vae_config() -> dict:
    """AutoencoderKL with x4 downsampling (3 blocks): 64 px -> 16x16x4 latents.

    ``scaling_factor`` is 1.0 here; training sets it from the latent std
    (SD's 0.18215 belongs to SD's VAE)."""
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=TINY_IMAGE_SIZE,
        scaling_factor=1.0,
    )


def tiny_unet_config() -> dict:
    """SD2.1's UNet layout in miniature: cross-attention at the high-resolution
    level and in the middle block, a plain block at the lowest level, linear
    attention projections, 16-wide heads, cross-attention width 64."""
    return dict(
        sample_size=TINY_IMAGE_SIZE // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        attention_head_dim=(2, 4),  # diffusers' legacy name: the number of heads per level
        cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
        use_linear_projection=True,
        norm_num_groups=TINY_NORM_GROUPS,
    )


def tiny_dinov2_config() -> dict:
    """A DINOv2-like backbone shaped like ViT-g/14 (SwiGLU MLP, layer scale,
    64-wide heads, patch 14) but 64 wide and 2 layers deep; 224 px input."""
    return dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=1,
        mlp_ratio=4,
        patch_size=14,
        use_swiglu_ffn=True,
        layerscale_value=1.0,
        layer_norm_eps=1e-6,
    )


def tiny_clip_vision_config() -> dict:
    """An open_clip ViT tower like ViT-H/14's but 64 wide and 2 layers deep."""
    return dict(image_size=ID_IMAGE_SIZE, layers=2, width=64, head_width=64, patch_size=14)


def check_prediction_type(prediction_type: str) -> str:
    """`prediction_type` if it is one of `PREDICTION_TYPES`, else a ValueError naming it."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r} is not one of {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def sampling_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """The released sampler's DDIM schedule (DESIGN.md "Sampling recipe"):
    50 steps give the timesteps 981, 961, ..., 1. ``prediction_type``: what
    the UNet predicts (the released model: epsilon; the tiny preset:
    `TINY_PREDICTION_TYPE`)."""
    return DDIMScheduler(
        **_SD21_SCHEDULE,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
        prediction_type=check_prediction_type(prediction_type),
    )


def training_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    """SD2.1's forward process for training; the loss target follows
    ``prediction_type`` (epsilon, or v for the tiny preset)."""
    return DDPMScheduler(**_SD21_SCHEDULE, clip_sample=False, prediction_type=check_prediction_type(prediction_type))


def prediction_target(
    scheduler: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the UNet is trained to output for z_t = add_noise(latents, noise, t):
    eps, or v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0 (the scheduler's prediction_type)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def _seeded(seed: int, build: Callable[[], Any]) -> Any:
    # diffusers/transformers constructors draw their init from torch's global
    # RNG and take no generator: seed it inside a fork so the caller's global
    # state is untouched and each model depends on its own seed only.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


ID_BACKBONES = ("world", "random")  # the tiny preset's frozen ID backbone: shipped in-world weights, or random init


def check_tiny_id_backbone(id_backbone: str, id_extractor: str) -> None:
    """`id_backbone` is "world", "random", or (for the dinov2 arms) a DINOv2IDExtractor / Dinov2Model folder."""
    if id_backbone in ID_BACKBONES:
        return
    if not isinstance(id_backbone, str) or not (Path(id_backbone) / "config.json").is_file():
        raise ValueError(
            f"id_backbone must be one of {ID_BACKBONES} or a saved DINOv2IDExtractor / Dinov2Model folder, "
            f"got {id_backbone!r}"
        )
    if id_extractor == "clip":
        raise ValueError(f"id_backbone={id_backbone!r}: a folder holds a DINOv2-like backbone; the clip arm takes "
                         "\"world\" or \"random\"")


def _dinov2_backbone_from(folder: str):
    """The `Dinov2Model` of a folder: a DINOv2IDExtractor's backbone, or a Dinov2Model `save_pretrained` folder."""
    import json

    from transformers import Dinov2Model

    with torch.random.fork_rng(devices=[]):  # module construction draws from the global RNG: keep it the caller's
        if json.loads((Path(folder) / "config.json").read_text()).get("_class_name") == DINOv2IDExtractor.__name__:
            return DINOv2IDExtractor.from_pretrained(folder, torch_dtype=torch.float32).backbone.eval()
        return Dinov2Model.from_pretrained(folder).eval()


def tiny_id_extractor(id_extractor: str, id_backbone: str, seed: int):
    """The tiny preset's ID extractor: the world's pretrained backbone (``id_backbone="world"``:
    the DINOv2-like one for the dinov2 arms, the CLIP-like vision tower for the clip arm, as the
    released recipe freezes a pretrained DINOv2), a random-init one of the same shape ("random"), or
    a DINOv2-like backbone from a folder (`check_tiny_id_backbone`). The projector's init is drawn
    from `seed` in every case."""
    if id_extractor not in ID_EXTRACTOR_NAMES:
        raise ValueError(f"id_extractor must be one of {ID_EXTRACTOR_NAMES}, got {id_extractor!r}")
    check_tiny_id_backbone(id_backbone, id_extractor)
    if id_backbone == "random":
        return _seeded(
            seed,
            lambda: build_id_extractor(
                id_extractor,
                cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
                backbone_config=tiny_dinov2_config(),
                vision_config=tiny_clip_vision_config(),
            ),
        )
    from anydoor import world

    generator = torch.Generator().manual_seed(seed)
    if id_extractor == "clip":
        from anydoor.models.id_extractors import CLIPIDExtractor

        weights = world.verified_folder(world.CLIP_DIR) / world.CLIP_WEIGHTS
        return CLIPIDExtractor.from_open_clip(
            world.register_open_clip(), pretrained=str(weights), cross_attention_dim=TINY_CROSS_ATTENTION_DIM,
            generator=generator,
        )
    tokens = "global" if id_extractor == "dinov2-global" else "all"
    backbone = world.load_dinov2() if id_backbone == "world" else _dinov2_backbone_from(id_backbone)
    return DINOv2IDExtractor.from_backbone(
        backbone, cross_attention_dim=TINY_CROSS_ATTENTION_DIM, tokens=tokens, image_size=ID_IMAGE_SIZE,
        generator=generator,
    )


def tiny_components(
    seed: int = 0,
    id_extractor: str = "dinov2",
    vae: AutoencoderKL | None = None,
    unet: UNet2DConditionModel | None = None,
    id_backbone: str = "world",
) -> dict:
    """The embedded default's components (DESIGN.md 4): random init, but for the frozen ID
    backbone, the embedded world's pretrained one by default.

    Each model is built from its own seed derived from ``seed`` (VAE, UNet,
    detail extractor, ID extractor in that order), so e.g. the UNet does not
    depend on which ID extractor is chosen or whether ``vae`` is given.

    Args:
        seed: base seed of the random initialisation.
        id_extractor: one of ``ID_EXTRACTOR_NAMES``.
        vae: a trained tiny VAE to reuse (x4 downsampling, 4 latent channels).
        unet: a pretrained tiny UNet to start from (`anydoor.training.base_unet`,
            the embedded default's stand-in for SD2.1); the detail extractor
            is copied from its encoder, as the released model's was from SD's.
        id_backbone: "world" (the shipped in-world backbone, `anydoor.world`)
            or "random" (random init, the floor the world's is measured against).

    Returns:
        dict with ``vae``, ``unet``, ``controlnet``, ``id_extractor``, ``scheduler``.
    """
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if id_extractor not in ID_EXTRACTOR_NAMES:
        raise ValueError(f"id_extractor must be one of {ID_EXTRACTOR_NAMES}, got {id_extractor!r}")
    if vae is not None:
        if not isinstance(vae, AutoencoderKL):
            raise TypeError(f"vae must be a diffusers AutoencoderKL, got {type(vae).__name__}")
        downscale = 2 ** (len(vae.config.block_out_channels) - 1)
        if downscale != 4 or vae.config.latent_channels != 4:
            raise ValueError(
                "vae must downsample x4 into 4 latent channels to match the tiny UNet, "
                f"got x{downscale} and {vae.config.latent_channels} channels"
            )
    vae_seed, unet_seed, controlnet_seed, id_seed = (
        int(child.generate_state(1)[0]) for child in np.random.SeedSequence(int(seed)).spawn(4)
    )

    if vae is None:
        vae = _seeded(vae_seed, lambda: AutoencoderKL(**tiny_vae_config()))
    if unet is None:
        unet = _seeded(unet_seed, lambda: UNet2DConditionModel(**tiny_unet_config()))
    elif not isinstance(unet, UNet2DConditionModel) or unet.config.cross_attention_dim != TINY_CROSS_ATTENTION_DIM:
        raise TypeError(f"unet must be a tiny UNet2DConditionModel (cross_attention_dim {TINY_CROSS_ATTENTION_DIM}), got {unet!r:.80}")
    controlnet = _seeded(controlnet_seed, lambda: build_detail_extractor(unet, TINY_CONDITIONING_CHANNELS))
    extractor = tiny_id_extractor(id_extractor, id_backbone, id_seed)
    return dict(vae=vae, unet=unet, controlnet=controlnet, id_extractor=extractor,
                scheduler=sampling_scheduler(TINY_PREDICTION_TYPE))


def full_size_configs() -> dict:
    """Configs of the released model's networks (DESIGN.md 1 and 1c).

    Keys: ``unet`` (SD2.1-base), ``vae`` (SD2.1), ``dinov2`` (ViT-g/14
    architecture; the weights' grid is ``DINOV2_GIANT_IMAGE_SIZE``, AnyDoor runs
    it at ``ID_IMAGE_SIZE``), ``clip_vision`` (open_clip ViT-H-14 tower, the
    CLIP arm), ``detail_extractor`` (`build_detail_extractor` arguments) and
    ``cross_attention_dim``.
    """
    return dict(
        unet=dict(
            sample_size=64,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            attention_head_dim=(5, 10, 20, 20),
            cross_attention_dim=1024,
            use_linear_projection=True,
            norm_num_groups=32,
            flip_sin_to_cos=True,
            freq_shift=0,
        ),
        vae=dict(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(128, 256, 512, 512),
            layers_per_block=2,
            latent_channels=4,
            norm_num_groups=32,
            sample_size=512,
            scaling_factor=0.18215,
        ),
        dinov2=dict(
            hidden_size=1536,
            num_hidden_layers=40,
            num_attention_heads=24,
            mlp_ratio=4,
            patch_size=14,
            use_swiglu_ffn=True,
            layerscale_value=1.0,
            layer_norm_eps=1e-6,
        ),
        clip_vision=dict(image_size=ID_IMAGE_SIZE, layers=32, width=1280, head_width=80, patch_size=14),
        detail_extractor=dict(conditioning_embedding_out_channels=(16, 32, 96, 256), conditioning_channels=4),
        cross_attention_dim=1024,
    )


def full_size_components(device: str | torch.device = "meta") -> dict:
    """The released model's networks built from `full_size_configs` (random
    init; on the meta device by default, for parameter counts).

    Returns:
        dict with ``vae``, ``unet``, ``controlnet``, ``id_extractor`` (DINOv2-g
        at 224 px + projector) and ``scheduler``.
    """
    configs = full_size_configs()
    with torch.device(device):
        vae = AutoencoderKL(**configs["vae"])
        unet = UNet2DConditionModel(**configs["unet"])
        controlnet = build_detail_extractor(unet, **configs["detail_extractor"])
        id_extractor = DINOv2IDExtractor(
            backbone_config=configs["dinov2"],
            cross_attention_dim=configs["cross_attention_dim"],
            image_size=ID_IMAGE_SIZE,
        )
    return dict(vae=vae, unet=unet, controlnet=controlnet, id_extractor=id_extractor, scheduler=sampling_scheduler())


# AnyDoor-world's sampling guidance. Trained as released, without conditioning dropout, its unconditional
# branch (the zero image's tokens) is untrained, and guidance over-saturates the crop: on the first 16 demo pairs,
# guidance 1.0 / 3.0 / 5.0 give seam 6.4 / 16.9 / 47.2 and retrieval top-1 0.91 / 0.62 / 0.31 (2026-12-07).
ANYDOOR_WORLD_GUIDANCE = 1.0


def anydoor_world():
    """AnyDoor-world (`anydoor.world.load_anydoor_world`): the embedded default trained long, the
    released checkpoint's counterpart and the default pipeline of `anydoor compose` and the quickstart.
    Sample it at ``guidance_scale=ANYDOOR_WORLD_GUIDANCE`` (1.0), not the released 5.0."""
    from anydoor import world

    return world.load_anydoor_world()


def tiny_pipeline(
    seed: int = 0,
    id_extractor: str = "dinov2",
    detail_map: str = "hf",
    remove_background: bool = True,
    vae: AutoencoderKL | None = None,
    id_backbone: str = "world",
):
    """The embedded default assembled into an `AnyDoorPipeline` (untrained networks but for the world's
    ID backbone, or a given trained tiny VAE); samples on a CPU in about a second. The trained
    embedded default is `anydoor_world`."""
    from anydoor.pipeline_anydoor import AnyDoorPipeline

    components = tiny_components(seed=seed, id_extractor=id_extractor, vae=vae, id_backbone=id_backbone)
    return AnyDoorPipeline(
        **components, image_size=TINY_IMAGE_SIZE, detail_map=detail_map, remove_background=remove_background
    )
