"""The embedded world's base UNet: a caption-conditioned text-to-image latent diffusion model (SD2.1's stand-in).

AnyDoor starts from SD2.1 (DESIGN.md "Training recipe"): a UNet whose
cross-attention reads OpenCLIP text tokens, trained with caption dropout so
its empty-caption branch is a model of all images. Its projector maps DINOv2
tokens into that token space. The embedded world's stand-in
(`anydoor pretrain-world`, stage ``base_unet``) is the tiny UNet
(`presets.tiny_unet_config`) trained the same way on the world's scene crops
and captions (`anydoor.data.world_scenes`): latents of the shipped world VAE,
v-prediction (`presets.TINY_PREDICTION_TYPE`) on SD2.1's schedule, the
world CLIP's per-token text states (`models.caption_encoder`), the caption
replaced by "" with probability ``caption_dropout``.

The log's held-out curve reports the v-loss on fixed held-out crops, noise
and timesteps with their own captions, with the empty caption and with
another crop's caption: the base reads its captions when the first is lower
than the other two.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from anydoor.data.world_scenes import scene_crops
from anydoor.training.world_vae import HELD_OUT_OBJECTS, HELD_OUT_SEED

HELD_OUT_BATCH = 128


@dataclass(frozen=True)
class WorldBaseSettings:
    steps: int = 5000
    batch_size: int = 16
    learning_rate: float = 1e-3  # AdamW, 100 warm-up steps, cosine-decayed to 5 % of it
    caption_dropout: float = 0.1  # SD's 10 %: trains the unconditional (empty-caption) branch
    empty_prob: float = 0.25  # scene crops without an object
    image_size: int = 64
    eval_every: int = 500
    seed: int = 22

    def __post_init__(self):
        for name in ("steps", "batch_size", "image_size", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not 0.0 <= self.caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout!r}")


def drop_captions(captions: list[str], probability: float, rng: np.random.Generator) -> list[str]:
    """Each caption replaced by the empty caption with `probability` (caption dropout)."""
    keep = rng.random(len(captions)) >= probability
    return [c if k else "" for c, k in zip(captions, keep)]


@dataclass
class HeldOut:
    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    states: torch.Tensor  # own captions
    empty: torch.Tensor  # the empty caption
    shuffled: torch.Tensor  # another crop's caption


def held_out_batch(vae, encoder, image_size: int, count: int = HELD_OUT_BATCH) -> HeldOut:
    """Fixed held-out crops (objects of `HELD_OUT_SEED`), noise and timesteps."""
    from anydoor.data.world_views import world_objects

    rng = np.random.default_rng(HELD_OUT_SEED + 1)
    crops = scene_crops(world_objects(HELD_OUT_OBJECTS, HELD_OUT_SEED), count, image_size, rng)
    images, _ = crops.tensors()
    generator = torch.Generator().manual_seed(HELD_OUT_SEED)
    with torch.no_grad():
        latents = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor
    order = np.roll(np.arange(count), 1)
    return HeldOut(
        latents=latents,
        noise=torch.randn(latents.shape, generator=generator),
        timesteps=torch.randint(0, 1000, (count,), generator=generator),
        states=encoder(crops.captions),
        empty=encoder.unconditional(count),
        shuffled=encoder([crops.captions[i] for i in order]),
    )


@torch.no_grad()
def held_out_losses(unet, scheduler, held: HeldOut) -> dict:
    """Held-out v-loss with the crops' own captions, the empty caption and shuffled captions."""
    from anydoor.presets import prediction_target

    unet.eval()
    noisy = scheduler.add_noise(held.latents, held.noise, held.timesteps)
    target = prediction_target(scheduler, held.latents, held.noise, held.timesteps)
    return {
        f"loss_{name}": float(F.mse_loss(unet(noisy, held.timesteps, encoder_hidden_states=states).sample, target))
        for name, states in (("caption", held.states), ("empty", held.empty), ("shuffled", held.shuffled))
    }


@dataclass
class WorldBaseRun:
    unet: object
    curve: list
    seconds: float
    settings: WorldBaseSettings

    def log(self) -> dict:
        return {"curve": self.curve, "train_seconds": round(self.seconds, 1), "final": self.curve[-1],
                "settings": asdict(self.settings)}


def train_world_base(settings: WorldBaseSettings, bank, vae, encoder, progress: bool = True,
                     held: HeldOut | None = None) -> WorldBaseRun:
    """Train the tiny UNet as a caption-conditioned v-prediction model of `vae`'s latents of `bank`'s scenes."""
    from diffusers import UNet2DConditionModel
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from tqdm.auto import tqdm

    from anydoor.presets import TINY_PREDICTION_TYPE, prediction_target, tiny_unet_config, training_scheduler

    vae = vae.eval().requires_grad_(False)
    scheduler = training_scheduler(TINY_PREDICTION_TYPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        unet = UNet2DConditionModel(**tiny_unet_config())
    if unet.config.cross_attention_dim != encoder.width:
        raise ValueError(f"the UNet's cross_attention_dim {unet.config.cross_attention_dim} differs from the "
                         f"caption encoder's width {encoder.width}")
    held = held if held is not None else held_out_batch(vae, encoder, settings.image_size)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings.learning_rate)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, min(100, settings.steps // 10), settings.steps,
                                                  num_cycles=0.5 * (1 - 0.05))  # ends at ~5 % of the lr
    curve = [{"step": 0, "seconds": 0.0, **held_out_losses(unet, scheduler, held)}]
    losses = []
    start = time.perf_counter()
    bar = tqdm(range(1, settings.steps + 1), desc="world-base", disable=not progress, dynamic_ncols=True)
    for step in bar:
        unet.train()
        crops = scene_crops(bank, settings.batch_size, settings.image_size, rng, settings.empty_prob)
        images, _ = crops.tensors()
        states = encoder(drop_captions(crops.captions, settings.caption_dropout, rng))
        with torch.no_grad():
            latents = vae.encode(images).latent_dist.sample(generator=generator) * vae.config.scaling_factor
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        prediction = unet(scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=states).sample
        loss = F.mse_loss(prediction, prediction_target(scheduler, latents, noise, t))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        losses.append(loss.item())
        if step % settings.eval_every == 0 or step == settings.steps:
            scores = held_out_losses(unet, scheduler, held)
            curve.append({"step": step, "seconds": round(time.perf_counter() - start, 1),
                          "loss": float(np.mean(losses[-100:])), **scores})
            bar.set_postfix(held=f"{scores['loss_caption']:.4f}/{scores['loss_empty']:.4f}")
    return WorldBaseRun(unet, curve, time.perf_counter() - start, settings)
