"""AnyDoor-world: the full method trained long on the embedded world (the released checkpoint's stand-in).

The released AnyDoor checkpoint is SD2.1 + DINOv2 fine-tuned by the recipe
for far longer than any ablation arm. Its embedded-world counterpart
(`anydoor pretrain-world`, stage ``anydoor_world``) is the same recipe as the
demo's full method (DINOv2-like ID tokens with the background removed, the HF
map, ATS, the released trainable set) started from the shipped world VAE,
base UNet and DINOv2-like backbone, trained on the synthetic data set with a
pair pool for about 45 minutes on 2 cores. Checkpoints stay in the work
folder (outside git) for the training curve (`benchmarks/anydoor_world_curve.py`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# The demo's synthetic data set (eval.demo.SYNTH_SETTINGS): AnyDoor-world trains on what the demo's arms train on.
SYNTHETIC = dict(videos=240, frames=6, size=96, benchmark_pairs=16, seed=0)


@dataclass(frozen=True)
class AnyDoorWorldSettings:
    steps: int = 10000  # about 45 minutes on 2 cores (the demo's arms: 300)
    batch_size: int = 16
    learning_rate: float = 1e-3  # AdamW; warm-up, then cosine decay to 0
    lr_warmup_steps: int = 200
    pair_pool: int = 16000  # prepared pairs, each read 10 times at the defaults
    checkpoint_every: int = 500  # kept in the work folder, for the training curve
    seed: int = 0
    synthetic: dict = field(default_factory=lambda: dict(SYNTHETIC))

    def __post_init__(self):
        for name in ("steps", "batch_size", "pair_pool", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")


def synthetic_data(work: Path, settings: AnyDoorWorldSettings) -> Path:
    """The synthetic data set AnyDoor-world trains on, written once into the work folder."""
    from anydoor.data.synthetic import write_synthetic_dataset

    key = "-".join(f"{k}{v}" for k, v in sorted(settings.synthetic.items()))
    folder = Path(work) / f"synthetic-{key}"
    if not (folder / "manifest.json").is_file():
        write_synthetic_dataset(folder, **settings.synthetic)
    return folder


def anydoor_world_config(settings: AnyDoorWorldSettings, data: Path, vae: Path, base_unet: Path, id_backbone: Path,
                         run_dir: Path):
    """The `TrainConfig` of AnyDoor-world: the demo's full method, a long budget."""
    from anydoor.training.config import config_from_dict

    return config_from_dict({
        "data": [
            {"path": str(data / "videos"), "loader": "video", "kind": "video"},
            {"path": str(data / "images"), "loader": "image_mask", "kind": "image"},
        ],
        "model": {"preset": "tiny", "vae": str(vae), "base_unet": str(base_unet), "id_backbone": str(id_backbone),
                  "id_extractor": "dinov2", "detail_map": "hf", "remove_background": True, "trainable": "released"},
        "max_steps": settings.steps, "batch_size": settings.batch_size, "learning_rate": settings.learning_rate,
        "lr_scheduler": "cosine", "lr_warmup_steps": settings.lr_warmup_steps, "max_grad_norm": 1.0,
        "timestep_sampler": "ats", "pair_pool": settings.pair_pool, "pair_pool_dir": str(run_dir.parent / "pair_pool"),
        "seed": settings.seed, "output_dir": str(run_dir), "checkpoint_every": settings.checkpoint_every,
        "keep_checkpoints": None, "log_every": 50, "wandb_project": None, "sample_every": 0,
    })


def train_anydoor_world(settings: AnyDoorWorldSettings, vae: Path, base_unet: Path, id_backbone: Path, work: Path,
                        progress: bool = True):
    """Train AnyDoor-world into ``work/anydoor_world-run`` (resumes an interrupted run); returns (pipeline, log)."""
    import torch

    from anydoor.pipeline_anydoor import AnyDoorPipeline
    from anydoor.training import train

    work = Path(work)
    run_dir = work / "anydoor_world-run"
    config = anydoor_world_config(settings, synthetic_data(work, settings), vae, base_unet, id_backbone, run_dir)
    start = time.perf_counter()
    result = train(config, resume="auto")
    seconds = time.perf_counter() - start
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    pipe = AnyDoorPipeline.from_pretrained(result.pipeline_dir, torch_dtype=torch.float32)
    log = {
        "settings": asdict(settings), "steps": result.step, "seconds_this_call": round(seconds, 1),
        "loss_curve": [[row["step"], round(row["loss"], 5)] for row in lines[:: max(1, len(lines) // 40)]],
        "final_loss": result.loss, "samples_per_s": result.samples_per_second,
        "checkpoints": str(run_dir / "checkpoints"),
    }
    return pipe, log
