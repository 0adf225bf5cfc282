"""The embedded default's stand-in for SD2.1: a tiny UNet pretrained once, shared by every arm.

AnyDoor starts from a pretrained Stable Diffusion (DESIGN.md "Training
recipe": UNet and VAE from SD2.1, the detail extractor copied from the UNet
encoder); the ablations fine-tune from it. The embedded default mirrors that:
its tiny UNet is first trained as an unconditional latent denoiser on crops
of the synthetic scenes (the generic image prior, knowing nothing of objects
or references), cached like the tiny VAE, and every arm starts from it. Its
cross-attention sees a single all-zero token during pretraining, so it holds
no conditioning knowledge that could favour one arm.

`ensure_tiny_base` returns the cached UNet when its key (settings, VAE and
data hashes) matches, and trains one otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anydoor.training.checkpoints import cached_folder
from anydoor.training.vae import (
    VAETrainSettings,
    cache_key as vae_data_key,
    find_images,
    load_training_images,
    random_scene_crops,
)

META_FILE = "base_meta.json"
_KEY_VERSION = 2  # 2: v-prediction, 8 norm groups


@dataclass(frozen=True)
class BaseTrainSettings:
    steps: int = 600  # AdamW steps (about 2 minutes on 2 CPU cores)
    batch_size: int = 16  # crops per step
    learning_rate: float = 1e-3
    image_size: int = 64  # crop side (the diffusion model's S)
    seed: int = 0  # init, crops, timesteps, noise

    def __post_init__(self):
        for name, minimum in (("steps", 1), ("batch_size", 1), ("image_size", 8), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        if self.image_size % 4:
            raise ValueError(f"image_size must be a multiple of 4 (the VAE downsamples x4), got {self.image_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")


def _vae_digest(vae_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        digest.update((vae_dir / name).read_bytes())
    return digest.hexdigest()


def cache_key(data_dir: str | PathLike, vae_dir: str | PathLike, settings: BaseTrainSettings) -> str:
    from anydoor.presets import TINY_PREDICTION_TYPE, tiny_unet_config

    payload = json.dumps(
        {
            "version": _KEY_VERSION,
            "unet": tiny_unet_config(),
            "prediction_type": TINY_PREDICTION_TYPE,
            "settings": asdict(settings),
            "data": vae_data_key(data_dir, VAETrainSettings()),
            "vae": _vae_digest(Path(vae_dir)),
        },
        sort_keys=True,
        default=list,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_tiny_base(
    data_dir: str | PathLike,
    vae_dir: str | PathLike,
    out_dir: str | PathLike,
    progress: bool = True,
    **settings,
) -> dict:
    """Pretrain the tiny UNet (`anydoor.presets.tiny_unet_config`) as an
    unconditional v-prediction (`TINY_PREDICTION_TYPE`) denoiser of VAE latents
    of random scene crops, t ~ U[0, 1000) on SD2.1's schedule; save it to `out_dir`
    (atomically) with ``base_meta.json``."""
    return _train_into(data_dir, vae_dir, out_dir, BaseTrainSettings(**settings), progress, reuse=False)


def _train_into(data_dir: str | PathLike, vae_dir: str | PathLike, out_dir: str | PathLike,
                settings: BaseTrainSettings, progress: bool, reuse: bool) -> dict:
    """`train_tiny_base` into `out_dir` (atomically, with ``base_meta.json``),
    or nothing when `reuse` and `out_dir` holds a UNet of the same cache key."""
    vae_dir = Path(vae_dir)
    if not (vae_dir / "config.json").is_file():
        raise FileNotFoundError(f"vae_dir {str(vae_dir)!r} is not a saved VAE; train one with `anydoor train-vae`")
    key = cache_key(data_dir, vae_dir, settings)
    return cached_folder(
        out_dir, key, META_FILE, lambda folder: _train(folder, data_dir, vae_dir, settings, progress), reuse=reuse
    )


def _train(folder: Path, data_dir: str | PathLike, vae_dir: Path, settings: BaseTrainSettings, progress: bool) -> dict:
    """Pretrain the UNet, save it into `folder`; return its metadata but the cache key."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from tqdm.auto import tqdm

    from anydoor.presets import TINY_PREDICTION_TYPE, prediction_target, tiny_unet_config, training_scheduler

    images = load_training_images(find_images(data_dir))
    vae = AutoencoderKL.from_pretrained(vae_dir, torch_dtype=torch.float32).eval().requires_grad_(False)
    scheduler = training_scheduler(TINY_PREDICTION_TYPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        unet = UNet2DConditionModel(**tiny_unet_config())
    tokens = torch.zeros(1, 1, unet.config.cross_attention_dim)  # no conditioning: one all-zero token
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.learning_rate)
    start = time.perf_counter()
    unet.train()
    bar = tqdm(range(settings.steps), desc="train-base", disable=not progress, dynamic_ncols=True)
    losses = []
    for _ in bar:
        x = random_scene_crops(images, settings.batch_size, rng, settings.image_size)
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(generator=generator) * vae.config.scaling_factor
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(x),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        prediction = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=tokens.expand(len(x), -1, -1)).sample
        loss = F.mse_loss(prediction, prediction_target(scheduler, latents, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    meta = {
        "final_loss": float(np.mean(losses[-50:])),
        "first_loss": float(np.mean(losses[:50])),
        "train_seconds": time.perf_counter() - start,
        "settings": asdict(settings),
        "data_dir": str(data_dir),
        "vae_dir": str(vae_dir),
    }
    unet.save_pretrained(folder)
    return meta


def ensure_tiny_base(data_dir: str | PathLike, vae_dir: str | PathLike, cache_dir: str | PathLike,
                     progress: bool = True, **settings) -> Path:
    """The pretrained tiny UNet folder: `cache_dir` if its key matches, else trained into it."""
    _train_into(data_dir, vae_dir, cache_dir, BaseTrainSettings(**settings), progress, reuse=True)
    return Path(cache_dir)
