"""The embedded world's VAE: the tiny `AutoencoderKL` trained once on the world's scene crops and shipped.

SD2.1's VAE is a pretrained part AnyDoor keeps frozen; the embedded world's
counterpart is trained by `anydoor pretrain-world` (stage ``vae``) on
`anydoor.data.world_scenes` crops of the pretraining split, with the
chroma-weighted reconstruction loss of `anydoor.training.vae` (DESIGN.md
section 4) plus a small KL term. Every composite passes through this VAE, so
its reconstruction of *objects* caps every identity metric (issue 30's
fidelity ladder): the loss weights the object's pixels up (``mask_weight``),
and the held-out log reports PSNR inside the object masks next to PSNR on
whole crops.

Its ``scaling_factor`` is 1 / std of the latents (SD's rule for 0.18215).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from anydoor.data.world_scenes import scene_crops
from anydoor.training.vae import reconstruction_loss

HELD_OUT_SEED = 7_300_001  # root entropy of the held-out objects and crops the VAE and base are measured on
HELD_OUT_OBJECTS = 256
HELD_OUT_CROPS = 256


@dataclass(frozen=True)
class WorldVAESettings:
    architecture: dict = field(default_factory=dict)  # overrides of `presets.tiny_vae_config`
    steps: int = 6000
    batch_size: int = 16
    patch_size: int = 32  # training window of each 64 px crop (the VAE is convolutional)
    image_size: int = 64
    learning_rate: float = 2e-3  # cosine-decayed to 2 % of it
    kl_weight: float = 1e-6
    chroma_weight: float = 3.0
    mask_weight: float = 3.0  # the object's pixels count (1 + mask_weight) times in the loss
    empty_prob: float = 0.25
    eval_every: int = 1000
    seed: int = 21

    def __post_init__(self):
        for name in ("steps", "batch_size", "patch_size", "image_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.patch_size > self.image_size or self.image_size % 4 or self.patch_size % 4:
            raise ValueError(f"need patch_size <= image_size, both multiples of 4; got {self.patch_size}, {self.image_size}")


def vae_config(settings: WorldVAESettings) -> dict:
    from anydoor.presets import tiny_vae_config

    return {**tiny_vae_config(), **settings.architecture, "sample_size": settings.image_size}


def held_out_crops(image_size: int = 64, count: int = HELD_OUT_CROPS):
    """(images in [-1, 1], masks) of the held-out objects' scene crops: the same for every model."""
    from anydoor.data.world_views import world_objects

    rng = np.random.default_rng(HELD_OUT_SEED)
    return scene_crops(world_objects(HELD_OUT_OBJECTS, HELD_OUT_SEED), count, image_size, rng).tensors()


def _psnr(mse: float) -> float:
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


@torch.no_grad()
def reconstruction_scores(vae, images: torch.Tensor, masks: torch.Tensor, batch: int = 64) -> dict:
    """PSNR (dB, [0, 1] range) of decode(mean(encode(x))): on whole crops, and over the object pixels
    (pooled over the crops that hold an object)."""
    vae.eval()
    whole = inside = count = 0.0
    for i in range(0, len(images), batch):
        x, m = images[i : i + batch], masks[i : i + batch]
        recon = vae.decode(vae.encode(x).latent_dist.mode(), return_dict=False)[0].clamp(-1, 1)
        error = ((recon - x) / 2).square()
        whole += float(error.sum())
        inside += float((error * m).sum())
        count += float(m.sum())
    return {"psnr_whole": _psnr(whole / images.numel()), "psnr_mask": _psnr(inside / max(3 * count, 1.0))}


@dataclass
class WorldVAERun:
    vae: object
    curve: list
    seconds: float
    settings: WorldVAESettings

    def log(self) -> dict:
        return {"curve": self.curve, "train_seconds": round(self.seconds, 1), "final": self.curve[-1],
                "scaling_factor": self.vae.config.scaling_factor, "settings": asdict(self.settings)}


def train_world_vae(settings: WorldVAESettings, bank, progress: bool = True, held_out=None) -> WorldVAERun:
    """Train the world's VAE on scene crops of `bank`; `held_out`: (images, masks), default `held_out_crops`."""
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    images_held, masks_held = held_out if held_out is not None else held_out_crops(settings.image_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        vae = AutoencoderKL(**vae_config(settings))
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps, settings.learning_rate * 0.02)
    curve = [{"step": 0, "seconds": 0.0, **reconstruction_scores(vae, images_held, masks_held)}]
    start = time.perf_counter()
    bar = tqdm(range(1, settings.steps + 1), desc="world-vae", disable=not progress, dynamic_ncols=True)
    losses = []
    for step in bar:
        vae.train()
        x, m = scene_crops(bank, settings.batch_size, settings.image_size, rng, settings.empty_prob).tensors()
        if settings.patch_size < settings.image_size:
            y0, x0 = (int(v) for v in rng.integers(0, settings.image_size - settings.patch_size + 1, 2))
            window = (slice(None), slice(None), slice(y0, y0 + settings.patch_size), slice(x0, x0 + settings.patch_size))
            x, m = x[window], m[window]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator), return_dict=False)[0]
        weight = 1.0 + settings.mask_weight * m
        reconstruction = reconstruction_loss(recon * weight.sqrt(), x * weight.sqrt(), settings.chroma_weight).mean()
        loss = reconstruction + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(reconstruction.item() / x[0].numel())
        if step % settings.eval_every == 0 or step == settings.steps:
            scores = reconstruction_scores(vae, images_held, masks_held)
            curve.append({"step": step, "seconds": round(time.perf_counter() - start, 1),
                          "loss": float(np.mean(losses[-100:])), **scores})
            bar.set_postfix(psnr_mask=f"{scores['psnr_mask']:.2f}")
    seconds = time.perf_counter() - start
    with torch.no_grad():
        vae.eval()
        latents = vae.encode(images_held).latent_dist.sample(generator=generator)
    vae.register_to_config(scaling_factor=1.0 / float(latents.std()))
    return WorldVAERun(vae, curve, seconds, settings)
