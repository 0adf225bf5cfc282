"""Load the real base models (SD2.1-base, DINOv2 / open_clip) for a new AnyDoor.

Everything goes through the libraries' own loaders (`from_pretrained`,
`open_clip.create_model`), so a local folder, the Hugging Face cache and the
Hub all work the usual way. What cannot be found fails fast with a message
that names the missing piece and how to provide it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from anydoor.models.detail_extractor import build_detail_extractor
from anydoor.models.id_extractors import ID_EXTRACTOR_NAMES, CLIPIDExtractor, DINOv2IDExtractor
from anydoor.presets import sampling_scheduler

HOW_TO_PROVIDE = (
    "Provide it as a local folder path, or put it in the Hugging Face cache on a machine with "
    "network access (`hf download {repo}`), then copy the cache (HF_HOME, now {cache})."
)


def _offline(local_files_only: bool | None, source: str | Path) -> bool:
    if local_files_only is not None:
        return bool(local_files_only)
    if Path(source).exists():
        return True
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _missing(what: str, source: str | Path, err: Exception) -> FileNotFoundError:
    cache = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    return FileNotFoundError(
        f"could not load {what} from {str(source)!r}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
        + HOW_TO_PROVIDE.format(repo=source, cache=cache)
    )


def _refuse_v_prediction(stable_diffusion: str | Path, offline: bool) -> None:
    try:
        scheduler = DDPMScheduler.from_pretrained(stable_diffusion, subfolder="scheduler", local_files_only=offline)
    except (OSError, ValueError) as err:
        raise _missing("the Stable Diffusion scheduler config", stable_diffusion, err) from err
    if scheduler.config.prediction_type != "epsilon":
        raise ValueError(
            f"{stable_diffusion!s} predicts {scheduler.config.prediction_type!r}: AnyDoor's base is "
            "SD2.1-base (512 px, epsilon prediction), not the 768 px v-prediction SD2.1. "
            "Use stabilityai/stable-diffusion-2-1-base."
        )


def load_base_components(
    stable_diffusion: str | Path,
    id_backbone: str | Path,
    id_extractor: str,
    local_files_only: bool | None = None,
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256),
    clip_pretrained: str | Path | None = None,
    projector_generator: torch.Generator | None = None,
) -> dict:
    """vae, unet, controlnet, id_extractor and the released DDIM scheduler."""

    if id_extractor not in ID_EXTRACTOR_NAMES:
        raise ValueError(f"id_extractor={id_extractor!r} is not one of {', '.join(ID_EXTRACTOR_NAMES)}")
    offline = _offline(local_files_only, stable_diffusion)
    _refuse_v_prediction(stable_diffusion, offline)
    try:
        unet = UNet2DConditionModel.from_pretrained(stable_diffusion, subfolder="unet", local_files_only=offline)
        vae = AutoencoderKL.from_pretrained(stable_diffusion, subfolder="vae", local_files_only=offline)
    except (OSError, ValueError) as err:
        raise _missing("the Stable Diffusion UNet/VAE", stable_diffusion, err) from err

    cross_attention_dim = unet.config.cross_attention_dim
    if id_extractor == "clip":
        try:
            extractor = CLIPIDExtractor.from_open_clip(
                str(id_backbone), pretrained=None if clip_pretrained is None else str(clip_pretrained),
                cross_attention_dim=cross_attention_dim,
            )
        except (OSError, RuntimeError, ValueError) as err:
            raise _missing(f"the open_clip model {id_backbone} (pretrained={clip_pretrained})", id_backbone, err) from err
    else:
        tokens = "global" if id_extractor == "dinov2-global" else "all"
        try:
            extractor = DINOv2IDExtractor.from_backbone(
                id_backbone, cross_attention_dim=cross_attention_dim, tokens=tokens,
                local_files_only=_offline(local_files_only, id_backbone), generator=projector_generator,
            )
        except (OSError, ValueError) as err:
            raise _missing("the DINOv2 backbone", id_backbone, err) from err

    controlnet = build_detail_extractor(unet, conditioning_embedding_out_channels)
    return dict(vae=vae, unet=unet, controlnet=controlnet, id_extractor=extractor, scheduler=sampling_scheduler())
