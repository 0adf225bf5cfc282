"""The training loop: AnyDoor's released recipe on Hugging Face Accelerate.

AnyDoor (Chen et al., CVPR 2024, Sec. 3.4; DESIGN.md "Training recipe"):
eps-prediction on SD2.1's DDPM schedule, the ID tokens of the reference and
the collage hint as conditions, MSE between the true and predicted noise,
timesteps from adaptive timestep sampling. The embedded default's tiny UNet
predicts v instead (`anydoor.presets.TINY_PREDICTION_TYPE`); the loss target
follows the pipeline's ``prediction_type``. The same code runs on a CPU, one
GPU, and several GPUs under ``accelerate launch`` (DDP).

Determinism: one CPU `torch.Generator` per process (seeded from the config's
seed and the process index) draws the VAE posterior samples, timesteps,
noise and conditioning dropout; data item i of epoch e depends on (seed, e, i)
only. Checkpoints keep the generator states and the data position, so N
steps + resume + N steps equal 2N steps on the CPU, bit for bit.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import gather_object
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, default_collate
from tqdm.auto import tqdm

from anydoor.data.datasets import ImageMaskDataset, MixtureDataset, VideoPairDataset
from anydoor.data.pairs import PairConfig
from anydoor.models.denoiser import predict_noise, set_trainable
from anydoor.pipeline_anydoor import AnyDoorPipeline
from anydoor.presets import prediction_target, tiny_components, training_scheduler
from anydoor.training.checkpoints import (
    atomic_folder,
    checkpoint_path,
    latest_checkpoint,
    prune_checkpoints,
    remove_stale_temporaries,
    resolve_resume,
)
from anydoor.training.config import WORLD_MODEL, TrainConfig, config_from_dict, config_to_dict, load_config, save_config
from anydoor.training.pair_pool import load_or_prepare_pool, pool_batches, pool_key, prepare_pool
from anydoor.training.timesteps import sample_timesteps

STATE_FILE = "training_state.pt"
RAW_WEIGHTS_FILE = "trainable.safetensors"
METRICS_FILE = "metrics.jsonl"
TIMESTEP_BUCKETS = 4  # loss logged per quarter of the schedule


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    """What `train` returns: where the run is and how it ended."""

    output_dir: Path
    pipeline_dir: Path  # final pipeline (AnyDoorPipeline.from_pretrained)
    step: int  # optimiser steps done
    loss: float | None  # mean loss of the last logged window (None if nothing ran)
    samples_per_second: float | None  # throughput of the last logged window


class AnyDoorDenoiser(nn.Module):
    """eps_theta(z_t, t, reference, hint) with the ID extractor inside, so that
    DDP, autocast and gradient accumulation see one module."""

    def __init__(self, unet: nn.Module, controlnet: nn.Module, id_extractor: nn.Module):
        super().__init__()
        self.unet, self.controlnet, self.id_extractor = unet, controlnet, id_extractor

    def forward(
        self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, reference: torch.Tensor | None, hint: torch.Tensor,
        drop: torch.Tensor, features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        # `features`: the frozen backbone's tokens, cached by the pair pool, instead of the reference image.
        tokens = self.id_extractor(reference) if features is None else self.id_extractor.project(features)
        if drop.any():
            # Conditioning dropout: the zero-image tokens are the sampler's
            # unconditional input (DESIGN.md 1c).
            uncond = self.id_extractor.unconditional_tokens(1).to(tokens.dtype)
            tokens = torch.where(drop.view(-1, 1, 1), uncond, tokens)
        return predict_noise(self.unet, self.controlnet, noisy_latents, timesteps, tokens, hint)


# --------------------------------------------------------------------------- models


def _load_saved(cls, path: str | None, key: str, what: str, hint: str):
    """``cls.from_pretrained(path)``, None for no path; a missing folder raises naming the config key."""
    if path is None:
        return None
    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"config key {key!r} = {path!r} is not a saved {what} folder; {hint}")
    return cls.from_pretrained(path, torch_dtype=torch.float32)  # fp16-stored weights train in fp32


def _build_components(config: TrainConfig) -> dict:
    """Fresh components: the embedded tiny preset or SD2.1-base + an ID backbone."""
    model = config.model
    if model.preset == "tiny":
        from anydoor import world

        if model.vae == WORLD_MODEL:
            vae = world.load_vae()
        else:
            vae = _load_saved(
                AutoencoderKL, model.vae, "model.vae", "VAE", "train one with `anydoor train-vae --data DIR --out DIR`"
            )
        if model.base_unet == WORLD_MODEL:
            unet = world.load_base_unet()
        else:
            unet = _load_saved(
                UNet2DConditionModel, model.base_unet, "model.base_unet", "UNet",
                "pretrain one with `anydoor train-base --data DIR --vae DIR --out DIR`",
            )
        return tiny_components(seed=config.seed, id_extractor=model.id_extractor, vae=vae, unet=unet,
                               id_backbone=model.id_backbone)
    projector_generator = torch.Generator().manual_seed(config.seed)
    pipe = AnyDoorPipeline.from_base_models(
        stable_diffusion=model.stable_diffusion,
        id_backbone=model.id_backbone,
        id_extractor=model.id_extractor,
        local_files_only=model.local_files_only,
        detail_map=model.detail_map,
        remove_background=model.remove_background,
        clip_pretrained=model.clip_pretrained,
        projector_generator=projector_generator,
    )
    return dict(pipe.components)


def _make_pipeline(components: dict, config: TrainConfig, image_size: int):
    pipe = AnyDoorPipeline(
        vae=components["vae"], unet=components["unet"], controlnet=components["controlnet"],
        id_extractor=components["id_extractor"], scheduler=components["scheduler"], image_size=image_size,
        detail_map=config.model.detail_map, remove_background=config.model.remove_background,
    )
    pipe.set_progress_bar_config(disable=True)  # sample grids run inside the training bar
    return pipe


def _freeze_to_eval(module: nn.Module) -> None:
    """Put every submodule without trainable parameters in eval mode (the
    frozen parts run as at inference: no dropout, fixed statistics)."""
    for sub in module.modules():
        params = list(sub.parameters())
        if params and not any(p.requires_grad for p in params):
            sub.eval()


# --------------------------------------------------------------------------- data


def _build_dataset(config: TrainConfig, image_size: int):
    sources = []
    for i, source in enumerate(config.data):
        seed = int(np.random.SeedSequence([config.seed, i]).generate_state(1)[0])
        # The released video loaders reject a box only when both sides fail (DESIGN.md).
        pair_config = PairConfig(
            image_size=image_size, detail_map=config.model.detail_map,
            remove_background=config.model.remove_background,
            box_rule="both" if source.loader == "video" else "either",
        )
        path = Path(source.path)
        try:
            if source.loader == "video":
                dataset = VideoPairDataset(path, pair_config, kind=source.kind, seed=seed)
            else:
                dataset = ImageMaskDataset(path / "images", path / "masks", pair_config, kind=source.kind, seed=seed,
                                           masks=source.masks)
        except (FileNotFoundError, ValueError, TypeError) as err:
            raise type(err)(f"config key 'data.{i}' ({source.loader} source {source.path!r}): {err}") from None
        if len(dataset) == 0:
            raise ValueError(f"config key 'data.{i}': source {source.path!r} is empty")
        sources.append((dataset, source.weight))
    length = config.samples_per_epoch or sum(len(d) for d, _ in sources)
    return MixtureDataset(sources, length=length, seed=config.seed)


def _micro_batches(dataset, config: TrainConfig, process_index: int, num_processes: int, epoch: int, items_done: int):
    """Yield (epoch, items done after this batch, batch) forever, from a position.

    Global micro-batch b of an epoch holds items [b*G, (b+1)*G), G = batch size
    x processes; process p takes its p-th slice. Items are i.i.d. draws of the
    mixture (it picks the source and item from (seed, epoch, i)), so a fixed
    order is a random order, and resuming needs only (epoch, items done).
    """
    per_process, global_batch = config.batch_size, config.batch_size * num_processes
    batches_per_epoch = len(dataset) // global_batch
    while True:
        dataset.set_epoch(epoch)
        first = items_done // global_batch
        indices = [
            list(range(b * global_batch + process_index * per_process, b * global_batch + (process_index + 1) * per_process))
            for b in range(first, batches_per_epoch)
        ]
        loader = DataLoader(
            dataset, batch_sampler=indices, num_workers=config.num_workers, collate_fn=default_collate,
            # Worker seeds come from this generator, not from torch's global RNG.
            generator=torch.Generator().manual_seed(config.seed),
        )
        for b, batch in zip(range(first, batches_per_epoch), loader):
            yield epoch, (b + 1) * global_batch, batch
        epoch, items_done = epoch + 1, 0


# --------------------------------------------------------------------------- logging


class _MetricWindow:
    """Per-sample losses since the last log line, by timestep bucket and source kind."""

    def __init__(self, num_train_timesteps: int):
        self.num_train_timesteps = num_train_timesteps
        self.reset()

    def reset(self) -> None:
        self.losses, self.timesteps, self.kinds = [], [], []
        self.start = time.perf_counter()

    def add(self, losses: torch.Tensor, timesteps: torch.Tensor, kinds: list[str]) -> None:
        self.losses += losses.tolist()
        self.timesteps += timesteps.tolist()
        self.kinds += kinds

    def summary(self, step: int, lr: float, epoch: int) -> dict:
        losses = np.asarray(self.losses, dtype=np.float64)
        timesteps = np.asarray(self.timesteps)
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        row = {"step": step, "epoch": epoch, "loss": float(losses.mean()), "lr": lr,
               "samples_per_s": len(losses) / elapsed}
        width = self.num_train_timesteps // TIMESTEP_BUCKETS
        for k in range(TIMESTEP_BUCKETS):
            lo = k * width
            hi = self.num_train_timesteps if k == TIMESTEP_BUCKETS - 1 else lo + width
            selected = (timesteps >= lo) & (timesteps < hi)
            if selected.any():
                row[f"loss_t{lo}-{hi}"] = float(losses[selected].mean())
        kinds = np.asarray(self.kinds)
        for kind in sorted(set(self.kinds)):
            row[f"loss_{kind}"] = float(losses[kinds == kind].mean())
        return row


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the metrics lines up to `step` (a crashed run may have logged past its last checkpoint)."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _init_wandb(config: TrainConfig, output_dir: Path):
    if config.wandb_project is None:
        return None
    mode = config.wandb_mode or os.environ.get("WANDB_MODE") or "offline"
    if mode == "disabled":
        return None
    import wandb

    id_file = output_dir / "wandb_run_id.txt"
    # A resumed run continues the same W&B run.
    run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
    id_file.write_text(run_id + "\n")
    return wandb.init(
        project=config.wandb_project, name=config.wandb_run_name, mode=mode, dir=str(output_dir),
        config=config_to_dict(config), id=run_id, resume="allow",
    )


def _sample_pairs(config: TrainConfig, image_size: int) -> dict:
    """The first `sample_count` items of epoch 0, from a separate copy of the
    data set: the same pairs in every grid of a run, resumed or not."""
    dataset = _build_dataset(config, image_size)
    dataset.set_epoch(0)
    count = min(config.sample_count, len(dataset))
    return default_collate([dataset[i] for i in range(count)])


def _sample_grid(pipe, batch: dict, config: TrainConfig) -> np.ndarray:
    """Rows: reference, collage, true target, generated (one column per pair), uint8 HxWx3."""
    size = pipe.config.image_size
    generator = torch.Generator().manual_seed(config.seed)
    crops = pipe.generate_crops(
        batch["reference"], batch["hint"], num_inference_steps=config.sample_steps,
        guidance_scale=config.sample_guidance, generator=generator,
    )
    reference = F.interpolate(batch["reference"], size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    rows = [reference, (batch["hint"][:, :3] + 1) / 2, (batch["target"] + 1) / 2, crops]
    grid = torch.cat([torch.cat(list(row.clamp(0, 1)), dim=2) for row in rows], dim=1)
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


# --------------------------------------------------------------------------- checkpoints


def _save_checkpoint(folder: Path, pipe, trainable: dict, state: dict, ema) -> None:
    """pipeline/ (EMA weights when EMA is on) + state/ (optimiser, generators, position, raw weights)."""
    params = list(trainable.values())
    with atomic_folder(folder) as tmp:
        (tmp / "state").mkdir()
        torch.save(state, tmp / "state" / STATE_FILE)
        if ema is not None:
            save_file({name: p.detach().cpu().contiguous() for name, p in trainable.items()},
                      tmp / "state" / RAW_WEIGHTS_FILE)
            ema.store(params)
            ema.copy_to(params)
        try:
            pipe.save_pretrained(tmp / "pipeline")
        finally:
            if ema is not None:
                ema.restore(params)


def _load_checkpoint(folder: Path) -> tuple[dict, dict, dict | None]:
    """(pipeline components, training state, raw trainable weights or None)."""
    pipe = AnyDoorPipeline.from_pretrained(folder / "pipeline")
    state = torch.load(folder / "state" / STATE_FILE, weights_only=True)
    raw_path = folder / "state" / RAW_WEIGHTS_FILE
    return dict(pipe.components), state, load_file(raw_path) if raw_path.is_file() else None


# --------------------------------------------------------------------------- training


def _process_seed(seed: int, process_index: int) -> int:
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _accelerator(config: TrainConfig):
    # AcceleratorState is a process-wide singleton that refuses a second
    # mixed-precision setting; in a single process (a notebook calling train()
    # for several arms) each run starts from a fresh state. Checked only once
    # initialised: building PartialState first would fix its settings before
    # Accelerator reads ACCELERATE_USE_CPU and the like.
    if AcceleratorState._shared_state and not PartialState().use_distributed:
        AcceleratorState._reset_state()
    return Accelerator(
        mixed_precision=config.mixed_precision, gradient_accumulation_steps=config.gradient_accumulation_steps
    )


def diffusion_loss(
    model: nn.Module,
    vae,
    noise_scheduler,
    batch: dict,
    generator: torch.Generator,
    timestep_sampler: str = "ats",
    cond_dropout: float = 0.0,
    autocast=nullcontext,
) -> tuple[torch.Tensor, torch.Tensor]:
    """AnyDoor's training objective per sample (paper Eq. 1 with ATS):
    || eps - eps_theta(z_t, t, ID tokens, hint) ||^2, averaged over latent elements;
    with a v-prediction ``noise_scheduler`` (the tiny preset) the target is
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) z_0 instead.

    z_0 is a posterior sample of the frozen VAE times its scaling factor; t
    comes from `sample_timesteps` by each sample's source kind; z_t =
    sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps (the scheduler's ``add_noise``);
    with probability ``cond_dropout`` a sample's ID tokens become the
    unconditional ones. All draws come from ``generator`` (CPU), in a fixed
    order and number whatever the settings.

    Args:
        model: `AnyDoorDenoiser` (possibly wrapped by Accelerate / DDP).
        batch: ``reference`` (B,3,224,224) in [0,1], ``target`` (B,3,S,S) in
            [-1,1], ``hint`` (B,4,S,S) on the model's device; ``kind`` list.
            A pair-pool batch has ``moments`` (the VAE posterior's) instead of
            ``target`` and ``features`` (the frozen backbone's) instead of
            ``reference``.
        autocast: context manager for the VAE encode (Accelerate's autocast).

    Returns:
        (per-sample losses (B,) float32, timesteps (B,) int64 on the CPU).
    """
    kinds = list(batch["kind"])
    device = batch["hint"].device
    with torch.no_grad(), autocast():
        if "moments" in batch:  # the pair pool's cached posterior: the same draw as a fresh encode's
            posterior = DiagonalGaussianDistribution(batch["moments"])
        else:
            posterior = vae.encode(batch["target"]).latent_dist
        latents = posterior.sample(generator=generator).float() * vae.config.scaling_factor
    timesteps = sample_timesteps(kinds, timestep_sampler, generator, noise_scheduler.config.num_train_timesteps)
    noise = torch.randn(latents.shape, generator=generator).to(device)
    drop = torch.rand(len(kinds), generator=generator) < cond_dropout
    noisy = noise_scheduler.add_noise(latents, noise, timesteps.to(device))
    prediction = model(noisy, timesteps.to(device), batch.get("reference"), batch["hint"], drop.to(device),
                       batch.get("features"))
    target = prediction_target(noise_scheduler, latents, noise, timesteps.to(device))
    return F.mse_loss(prediction.float(), target, reduction="none").mean(dim=(1, 2, 3)), timesteps


@torch.no_grad()
def pool_loss(pipe, pool, seed: int = 0, batch_size: int = 32) -> float:
    """Mean diffusion loss of a pipeline over a `PairPool` (a held-out one: the overfitting check),
    at timesteps and noise drawn uniformly from ``seed``: the same draws for every pipeline."""
    from anydoor.training.pair_pool import pool_batches

    model = AnyDoorDenoiser(pipe.unet, pipe.controlnet, pipe.id_extractor).eval()
    noise_scheduler = training_scheduler(pipe.config.prediction_type)
    generator = torch.Generator().manual_seed(seed)
    batches = pool_batches(pool, seed, min(batch_size, len(pool)), 0, 1, 0, 0)
    losses = []
    for _ in range(len(pool) // min(batch_size, len(pool))):
        _, _, batch = next(batches)
        per_sample, _ = diffusion_loss(model, pipe.vae, noise_scheduler, batch, generator, "uniform")
        losses.append(per_sample)
    return float(torch.cat(losses).mean())


def _checkpoint_to_resume(output_dir: Path, resume: bool | str | PathLike) -> Path | None:
    if resume is True or resume == "auto":
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is None and resume is True:
            raise ValueError(f"resume: output_dir {str(output_dir)!r} holds no complete checkpoint to resume from")
        return checkpoint
    if resume is not False:
        return resolve_resume(resume, output_dir)
    if latest_checkpoint(output_dir) is not None:
        raise ValueError(
            f"output_dir {str(output_dir)!r} already holds checkpoints; pass resume=True (--resume) to continue "
            "that run, or choose another output_dir"
        )
    return None


class _RunLog:
    """tqdm, metrics.jsonl and W&B for the main process; the metric window everywhere."""

    def __init__(self, config: TrainConfig, output_dir: Path, main: bool, step: int, resumed: bool,
                 num_train_timesteps: int):
        self.config, self.main = config, main
        self.window = _MetricWindow(num_train_timesteps)
        self.last: dict = {}
        self.path = output_dir / METRICS_FILE
        self.wandb = None
        if main:
            if resumed:
                _truncate_metrics(self.path, step)
            else:
                self.path.write_text("")
            self.wandb = _init_wandb(config, output_dir)
        self.progress = tqdm(total=config.max_steps, initial=step, desc="train", disable=not main, dynamic_ncols=True)
        self.start = time.perf_counter()  # elapsed_s: wall seconds of this call, set-up and pair pool included

    def step_done(self, step: int, lr: float, epoch: int) -> None:
        self.progress.update(1)
        if step % self.config.log_every and step != self.config.max_steps:
            return
        self.last = {**self.window.summary(step, lr, epoch), "elapsed_s": time.perf_counter() - self.start}
        self.window.reset()
        if self.main:
            with self.path.open("a") as f:
                f.write(json.dumps(self.last) + "\n")
            self.progress.set_postfix(loss=f"{self.last['loss']:.4f}", samples_s=f"{self.last['samples_per_s']:.1f}")
            if self.wandb is not None:
                self.wandb.log({k: v for k, v in self.last.items() if k != "step"}, step=step)

    def close(self) -> None:
        self.progress.close()
        if self.wandb is not None:
            self.wandb.finish()


def train(config: TrainConfig | str | PathLike, resume: bool | str | PathLike = False,
          overrides: list[str] | tuple[str, ...] = ()) -> TrainResult:
    """Train AnyDoor from a config (a `TrainConfig`, its dict, or a YAML path).

    Args:
        config: the run's configuration (`anydoor.training.config`).
        resume: False: a new run (an output folder holding checkpoints is an
            error); True: continue from the latest complete checkpoint in
            ``output_dir``; "auto": continue if there is one, else start; a
            path: a checkpoint folder, or a run folder whose latest complete
            checkpoint is used.
        overrides: ``key=value`` strings applied when `config` is a path.

    Returns:
        `TrainResult`; the final pipeline is in ``output_dir/pipeline``.
    """
    # 1. Config, output folder, checkpoint to resume from
    if isinstance(config, (str, PathLike)):
        config = load_config(config, overrides)
    elif not isinstance(config, (TrainConfig, dict)):
        raise TypeError(f"config must be a TrainConfig, a dict or a YAML path, got {type(config).__name__}")
    elif overrides:
        raise ValueError("overrides apply to a config path; for a TrainConfig use dataclasses.replace")
    else:
        # Through a plain dict, so a TrainConfig built in code is type-checked like a file.
        config = config_from_dict(config_to_dict(config) if isinstance(config, TrainConfig) else config)
    output_dir = Path(config.output_dir)
    checkpoint = _checkpoint_to_resume(output_dir, resume)
    accelerator = _accelerator(config)
    main = accelerator.is_main_process
    log = None
    try:
        # 2. Models: fresh, or the checkpoint's pipeline (+ raw weights under EMA);
        #    trainable set by the recipe, frozen parts in eval mode
        state, raw_weights = None, None
        if checkpoint is None:
            components = _build_components(config)
        else:
            components, state, raw_weights = _load_checkpoint(checkpoint)
        vae, unet, controlnet = components["vae"], components["unet"], components["controlnet"]
        image_size = config.image_size or unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
        pipe = _make_pipeline(components, config, image_size)
        # The loss target follows what the UNet predicts (the pipeline's scheduler says it).
        noise_scheduler = training_scheduler(pipe.config.prediction_type)
        trainable = set_trainable(unet, controlnet, components["id_extractor"], config.model.trainable)
        vae.requires_grad_(False)
        if raw_weights is not None:
            # Under EMA the pipeline holds the averages; training resumes from
            # the raw weights (parameters frozen before have no average).
            with torch.no_grad():
                for name, param in trainable.items():
                    if name in raw_weights:
                        param.copy_(raw_weights[name])
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            controlnet.enable_gradient_checkpointing()
        model = AnyDoorDenoiser(unet, controlnet, components["id_extractor"])
        model.train()
        _freeze_to_eval(model)
        vae.eval()

        # 3. Data
        dataset = _build_dataset(config, image_size)
        global_batch = config.batch_size * accelerator.num_processes
        if global_batch > len(dataset):
            raise ValueError(
                f"batch_size={config.batch_size} x {accelerator.num_processes} process(es) = {global_batch} is larger "
                f"than the data set ({len(dataset)} samples per epoch); lower batch_size or raise samples_per_epoch"
            )

        # 4. Optimiser, lr schedule (one step per optimiser step), EMA, generator
        params = list(trainable.values())
        optimizer = torch.optim.AdamW(
            params, lr=config.learning_rate, betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.adam_weight_decay, eps=config.adam_epsilon,
        )
        lr_scheduler = get_scheduler(
            config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=config.max_steps
        )
        ema = EMAModel(params, decay=config.ema_decay) if config.ema else None
        model, optimizer = accelerator.prepare(model, optimizer)
        vae.to(accelerator.device)
        if ema is not None:
            ema.to(accelerator.device)
        generator = torch.Generator().manual_seed(_process_seed(config.seed, accelerator.process_index))

        # 5. Restore the training state
        step, epoch, items_done = 0, 0, 0
        if state is not None:
            step, epoch, items_done = _restore(state, checkpoint, optimizer, lr_scheduler, ema, accelerator, generator, config)
        if main:
            output_dir.mkdir(parents=True, exist_ok=True)
            remove_stale_temporaries(output_dir)
            save_config(config, output_dir / "config.yaml")
        log = _RunLog(config, output_dir, main, step, state is not None, noise_scheduler.config.num_train_timesteps)
        accelerator.wait_for_everyone()

        def save(at_step: int) -> None:
            generators = [generator.get_state()]
            if accelerator.num_processes > 1:
                generators = gather_object(generators)
            if main:
                training_state = {
                    "step": at_step, "epoch": epoch, "items_done": items_done,
                    "optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                    "generators": generators, "config": config_to_dict(config),
                }
                _save_checkpoint(checkpoint_path(output_dir, at_step), pipe, trainable, training_state, ema)
                prune_checkpoints(output_dir, config.keep_checkpoints)
            accelerator.wait_for_everyone()

        # 6. The loop: one optimiser step per `gradient_accumulation_steps` micro-batches
        sample_batch = _sample_pairs(config, image_size) if main and config.sample_every else None
        if config.pair_pool:
            pool = _pair_pool(config, output_dir, dataset, vae, components["id_extractor"], image_size, main)
            batches = pool_batches(pool, config.seed, config.batch_size, accelerator.process_index,
                                   accelerator.num_processes, epoch, items_done)
        else:
            batches = _micro_batches(dataset, config, accelerator.process_index, accelerator.num_processes, epoch,
                                     items_done)
        while step < config.max_steps:
            epoch, items_done, batch = next(batches)
            batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with accelerator.accumulate(model):
                per_sample, timesteps = diffusion_loss(
                    model, vae, noise_scheduler, batch, generator, config.timestep_sampler, config.cond_dropout,
                    autocast=accelerator.autocast,
                )
                accelerator.backward(per_sample.mean())
                if accelerator.sync_gradients and config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            losses = accelerator.gather(per_sample.detach()).cpu()
            if not torch.isfinite(losses).all():
                last_good = latest_checkpoint(output_dir)
                raise NonFiniteLossError(
                    f"the loss is not finite ({losses.tolist()}) at step {step + 1}; training stopped. "
                    f"Last good checkpoint: {str(last_good) if last_good else 'none yet'} "
                    "(resume from it with a lower learning_rate, or mixed_precision 'bf16' instead of 'fp16')"
                )
            kinds = list(batch["kind"])
            log.window.add(
                losses,
                accelerator.gather(timesteps.to(accelerator.device)).cpu(),
                gather_object(kinds) if accelerator.num_processes > 1 else kinds,
            )
            if not accelerator.sync_gradients:
                continue

            # One optimiser step done
            lr_scheduler.step()
            if ema is not None:
                ema.step(params)
            step += 1
            log.step_done(step, lr_scheduler.get_last_lr()[0], epoch)
            if main and config.sample_every and step % config.sample_every == 0:
                _log_samples(pipe, sample_batch, config, output_dir, step, log.wandb, accelerator, ema, params)
                model.train()
                _freeze_to_eval(model)
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                save(step)

        # 7. The final pipeline (EMA weights when EMA is on), written atomically
        final_dir = output_dir / "pipeline"
        last = checkpoint_path(output_dir, step)
        if not last.is_dir():  # resumed from another run's checkpoint at or past max_steps
            save(step)
        if main:
            with atomic_folder(final_dir) as tmp:
                # The last checkpoint's pipeline/ is exactly the final pipeline.
                _copy_tree(last / "pipeline", tmp)
        accelerator.wait_for_everyone()
        return TrainResult(
            output_dir=output_dir, pipeline_dir=final_dir, step=step, loss=log.last.get("loss"),
            samples_per_second=log.last.get("samples_per_s"),
        )
    finally:
        if log is not None:
            log.close()


def _pair_pool(config: TrainConfig, output_dir: Path, dataset, vae, id_extractor, image_size: int, main: bool):
    """The run's `PairPool` (anydoor.training.pair_pool): loaded from ``pair_pool_dir`` or prepared there."""
    if config.pair_pool < config.batch_size:
        raise ValueError(f"pair_pool={config.pair_pool} pairs is fewer than one batch (batch_size={config.batch_size})")
    folder = Path(config.pair_pool_dir) if config.pair_pool_dir else output_dir / "pair_pool"
    key = pool_key(config, vae, id_extractor, image_size)
    return load_or_prepare_pool(
        folder, key, lambda k: prepare_pool(dataset, config.pair_pool, vae, id_extractor, key=k, progress=main)
    )


def _restore(state: dict, checkpoint: Path, optimizer, lr_scheduler, ema, accelerator, generator, config) -> tuple[int, int, int]:
    """Load optimiser, lr schedule, EMA, loss scaler and generator states; return (step, epoch, items done)."""
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if ema is not None:
        if state.get("ema") is None:
            raise ValueError(f"resume: checkpoint {str(checkpoint)!r} has no EMA state but the config sets ema: true")
        ema.load_state_dict(state["ema"])
    if accelerator.scaler is not None and state.get("scaler") is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    if len(state["generators"]) == accelerator.num_processes:
        generator.set_state(state["generators"][accelerator.process_index])
    else:
        # Another process count: reproducible from here on, not identical to an uninterrupted run.
        generator.manual_seed(_process_seed(config.seed + state["step"], accelerator.process_index))
    return state["step"], state["epoch"], state["items_done"]


def _copy_tree(source: Path, destination: Path) -> None:
    for item in source.iterdir():
        if item.is_dir():
            shutil.copytree(item, destination / item.name)
        else:
            shutil.copy2(item, destination / item.name)


def _log_samples(pipe, batch, config, output_dir, step, wandb_run, accelerator, ema, params) -> None:
    """Save (and send to W&B) a sample grid, with the EMA weights when EMA is on."""
    if batch is None:
        return
    for module in (pipe.unet, pipe.controlnet, pipe.id_extractor):
        module.eval()
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        with accelerator.autocast():
            grid = _sample_grid(pipe, batch, config)
    finally:
        if ema is not None:
            ema.restore(params)
    path = output_dir / "samples" / f"step-{step:06d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(grid).save(path)
    if wandb_run is not None:
        import wandb

        wandb_run.log({"samples": wandb.Image(grid, caption="reference / collage / target / generated")}, step=step)
