"""Training throughput and memory: the embedded default on CPU, the full size on paper (and measured).

1. Tiny preset: samples/s of `anydoor.training.train` on the synthetic data
   (batch 8, the median of the logged windows after a warm-up).
2. Tiny VAE: `train_vae` wall time and held-out reconstruction PSNR.
3. Full size (SD2.1-base + DINOv2-g + detail extractor, built on the meta
   device): parameter counts (total, trainable under the released recipe)
   and the memory of weights, gradients and AdamW state in fp32 and in bf16
   mixed precision.
4. With --full-step: one measured training step of the full-size networks at
   batch 1, 512 px, gradient checkpointing and precomputed DINOv2 tokens
   (the backbone is not loaded; the trainable projector is), if the memory
   estimate fits what the machine has free.

    python benchmarks/bench_training.py [--data data/synthetic] [--steps 40] [--vae-steps 300] [--full-step]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

GIB = 2**30


def tiny_throughput(data: Path, work: Path, steps: int, batch_size: int, warmup: int) -> dict:
    from anydoor.training import load_config, train

    sources = (
        f"data=[{{path: '{data / 'videos'}', loader: video, kind: video}}, "
        f"{{path: '{data / 'images'}', loader: image_mask, kind: image}}]"
    )
    config = load_config(None, [
        sources, "model.trainable=full_unet", f"max_steps={steps}", f"batch_size={batch_size}", "log_every=1",
        f"checkpoint_every={steps}", "wandb_mode=disabled", "learning_rate=1e-3", f"output_dir={work / 'tiny'}",
    ])
    start = time.perf_counter()
    train(config)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (work / "tiny" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows[warmup:]]
    return {
        "batch_size": batch_size, "steps": steps, "samples_per_s_median": statistics.median(rates),
        "seconds_per_step_median": batch_size / statistics.median(rates), "wall_s_incl_setup_and_saves": wall,
        "torch_threads": torch.get_num_threads(),
    }


def tiny_vae(data: Path, work: Path, steps: int) -> dict:
    from anydoor.training.vae import train_vae

    meta = train_vae(data, work / "vae", steps=steps, progress=False)
    return {k: meta[k] for k in ("psnr_held_out", "psnr_untrained", "scaling_factor", "train_seconds")} | {
        "steps": steps, "batch_size": meta["settings"]["batch_size"], "patch_size": meta["settings"]["patch_size"],
    }


def full_size_memory() -> dict:
    """Parameter counts on the meta device and the memory arithmetic (bytes per parameter)."""
    from anydoor.models.denoiser import trainable_parameters
    from anydoor.presets import full_size_components

    parts = full_size_components()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    n = {name: count(parts[name]) for name in ("unet", "controlnet", "vae")}
    n["dinov2@224"] = count(parts["id_extractor"].backbone)
    n["projector"] = count(parts["id_extractor"].projector)
    total = sum(n.values())
    trainable = sum(p.numel() for p in trainable_parameters(
        parts["unet"], parts["controlnet"], parts["id_extractor"], "released").values())
    frozen = total - trainable
    without_backbone = total - n["dinov2@224"]

    def budget(weights: float) -> dict:
        # gradients in fp32 (trainable master weights), AdamW: exp_avg + exp_avg_sq in fp32
        grads, adam = 4 * trainable, 8 * trainable
        return {"weights_gib": weights / GIB, "grads_gib": grads / GIB, "adamw_gib": adam / GIB,
                "total_gib": (weights + grads + adam) / GIB}

    return {
        "params": n, "total": total, "trainable_released": trainable, "frozen": frozen,
        # This code keeps every weight in fp32 and computes under autocast, so
        # fp32 and bf16 mixed precision store the same; bf16 halves activations.
        "fp32_or_bf16_autocast": budget(4 * total),
        # A leaner setup: frozen weights stored in bf16, trainable in fp32.
        "bf16_frozen_weights": budget(2 * frozen + 4 * trainable),
        # Precomputed ID tokens: the DINOv2 backbone is not in memory.
        "fp32_precomputed_tokens": budget(4 * without_backbone),
    }


def _mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return float("nan")


def full_step(estimate_gib: float, device: str) -> dict:
    """One AdamW step of the released recipe at batch 1, 512 px, gradient checkpointing,
    precomputed DINOv2 tokens (random, 257 x 1536), on `device`."""
    from anydoor.models.denoiser import predict_noise, set_trainable
    from anydoor.presets import full_size_configs, training_scheduler

    free = _mem_available_gib() if device == "cpu" else torch.cuda.mem_get_info()[0] / GIB
    if not free > estimate_gib * 1.15:
        return {"skipped": f"needs about {estimate_gib:.1f} GiB (+15% margin) for weights, gradients and AdamW "
                           f"state before activations; {free:.1f} GiB free on {device}"}
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from anydoor.models.detail_extractor import build_detail_extractor

    configs = full_size_configs()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**configs["unet"])
        controlnet = build_detail_extractor(unet, **configs["detail_extractor"])
        vae = AutoencoderKL(**configs["vae"])
        projector = torch.nn.Linear(configs["dinov2"]["hidden_size"], configs["cross_attention_dim"])
    holder = torch.nn.Module()
    holder.projector = projector
    params = list(set_trainable(unet, controlnet, holder, "released").values())
    for module in (unet, controlnet, vae, projector):
        module.to(device)
    vae.requires_grad_(False)
    unet.enable_gradient_checkpointing()
    controlnet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    scheduler = training_scheduler()
    g = torch.Generator().manual_seed(0)
    target = (torch.rand(1, 3, 512, 512, generator=g) * 2 - 1).to(device)
    hint = (torch.rand(1, 4, 512, 512, generator=g) * 2 - 1).to(device)
    backbone_tokens = torch.randn(1, 257, configs["dinov2"]["hidden_size"], generator=g).to(device)
    times = []
    for _ in range(2):  # the first step allocates the AdamW state
        start = time.perf_counter()
        with torch.no_grad():
            latents = vae.encode(target).latent_dist.sample(generator=g) * vae.config.scaling_factor
        t = torch.randint(0, 1000, (1,), generator=g)
        noise = torch.randn(latents.shape, generator=g).to(device)
        eps = predict_noise(unet, controlnet, scheduler.add_noise(latents, noise, t.to(device)), t.to(device),
                            projector(backbone_tokens), hint)
        loss = torch.nn.functional.mse_loss(eps, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 if device == "cpu"
            else torch.cuda.max_memory_allocated())
    return {"device": device, "seconds_first_step": times[0], "seconds_second_step": times[1],
            "peak_memory_gib": peak / GIB, "loss": float(loss)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="synthetic data set (default: a fresh small one)")
    parser.add_argument("--steps", type=int, default=40, help="tiny training steps to time")
    parser.add_argument("--warmup", type=int, default=5, help="logged steps left out of the median")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--vae-steps", type=int, default=0, help="tiny VAE steps to time (0: skip)")
    parser.add_argument("--full-step", action="store_true", help="measure one full-size training step if it fits")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = args.data
        if data is None:
            from anydoor.data.synthetic import write_synthetic_dataset

            data = work / "data"
            write_synthetic_dataset(data, videos=8, frames=4, size=96, benchmark_pairs=0, seed=0)
        results["tiny_training"] = tiny_throughput(data, work, args.steps, args.batch_size, args.warmup)
        if args.vae_steps:
            results["tiny_vae"] = tiny_vae(data, work, args.vae_steps)
    results["full_size"] = full_size_memory()
    if args.full_step:
        estimate = results["full_size"]["fp32_precomputed_tokens"]["total_gib"]
        results["full_step"] = full_step(estimate, args.device)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
