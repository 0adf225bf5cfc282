"""`anydoor pretrain-world`: train the embedded world's pretrained models, in stages.

Each stage trains one model on the pretraining split (`anydoor.data.world_views`)
and writes its files into the output folder (normally the package's
`anydoor/world/`); the calibration stage scores them (`eval.calibration`).
A stage's *inputs* are the source of the modules that define it, its
settings, the split's seed and size, and the outputs of the stages it reads;
their hash is recorded in the manifest with the stage's files, time and log.
A rerun redoes only the stages whose inputs changed (or whose files no
longer match), and the manifest is rewritten after every stage, so an
interrupted run resumes at the first unfinished stage.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from os import PathLike
from pathlib import Path

from anydoor.data.world_views import CALIBRATION_SEED, PRETRAIN_SEED
from anydoor.presets import ID_IMAGE_SIZE, TINY_CROSS_ATTENTION_DIM, tiny_clip_vision_config, tiny_dinov2_config
from anydoor.training.world_anydoor import AnyDoorWorldSettings
from anydoor.training.world_base import WorldBaseSettings
from anydoor.training.world_clip import ClipSettings
from anydoor.training.world_dino import DinoSettings
from anydoor.training.world_vae import WorldVAESettings
from anydoor.world import (
    ANYDOOR_WORLD_DIR,
    BASE_UNET_DIR,
    CLIP_DIR,
    CLIP_MODEL_NAME,
    CLIP_WEIGHTS,
    DINOV2_DIR,
    MANIFEST,
    METRIC_CLIP_DIR,
    METRIC_DINO_DIR,
    OPEN_CLIP_CONFIG_DIR,
    STAGE_NAMES,
    VAE_DIR,
    sha256_file,
)

PRETRAIN_OBJECTS = 4096  # objects of the pretraining split (the demo trains on about 60)
METRIC_CLIP_CONFIG = "vision_config.json"
METRIC_CLIP_WEIGHTS = "model.safetensors"


# The four models (DESIGN.md section 4's table), each sized to its budget on 2 CPU cores (about 12, 15, 7
# and 7 minutes). Seeds differ, and the metric models have shapes of their own (64 px inputs, the generated
# crops' size), so no arm is scored in its own ID backbone's embedding space.
# The CLIP-like model's text width is the UNet's cross-attention width (SD2.1 reads OpenCLIP-H's 1024).
CLIP_SETTINGS = ClipSettings(vision=tiny_clip_vision_config(), text_width=TINY_CROSS_ATTENTION_DIM, steps=750,
                             batch_size=128, seed=11)
DINOV2_SETTINGS = DinoSettings(
    architecture="dinov2", backbone={**tiny_dinov2_config(), "image_size": ID_IMAGE_SIZE}, ibot=True,
    global_size=112, local_size=56, steps=2600, highres_steps=200, batch_size=64, seed=12,
)
METRIC_CLIP_SETTINGS = ClipSettings(
    vision=dict(image_size=64, layers=4, width=96, head_width=32, patch_size=8),
    embed_dim=96, text_width=96, text_heads=4, text_layers=3, steps=900, batch_size=128, seed=13,
)
METRIC_DINO_SETTINGS = DinoSettings(
    architecture="vit",
    backbone=dict(hidden_size=96, num_hidden_layers=4, num_attention_heads=3, intermediate_size=384,
                  patch_size=8, image_size=64),
    global_size=64, local_size=32, steps=750, batch_size=64, seed=14,
)


# SD2.1's stand-ins (issue 26): the VAE, then the caption-conditioned base UNet on its latents.
VAE_SETTINGS = WorldVAESettings(steps=7000)  # about 22 minutes on 2 cores
BASE_UNET_SETTINGS = WorldBaseSettings()
# The released checkpoint's stand-in (issue 28): the full method trained long from the shipped base.
ANYDOOR_WORLD_SETTINGS = AnyDoorWorldSettings()


@dataclass(frozen=True)
class Stage:
    name: str
    folders: tuple[str, ...]  # the folders of the output it writes (none: the calibration)
    modules: tuple[str, ...]  # the source whose text is the stage's code version
    reads: tuple[str, ...] = ()
    run: Callable | None = None  # (context) -> the stage's log (a JSON-able dict)
    # stage -> its folder that this stage rewrites in place (AnyDoor-world's id_extractor/ holds the
    # DINOv2-like backbone with AnyDoor-world's projector): not removed before the run, listed with this
    # stage's files, and re-recorded in the owner's record (whose outputs hash stays: its tensors do)
    updates: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Context:
    """What a stage body gets: where to write, the settings of every stage, the split's size."""

    out: Path
    work: Path
    settings: dict  # stage name -> ClipSettings / DinoSettings
    objects: int = PRETRAIN_OBJECTS
    calibration_objects: int | None = None  # None: eval.calibration.CALIBRATION_OBJECTS
    progress: bool = True

    def bank(self):
        from anydoor.data.world_views import world_objects

        return world_objects(self.objects, PRETRAIN_SEED)

    def calibration_crops(self):
        from eval.calibration import CALIBRATION_OBJECTS, calibration_crops, write_calibration_set

        count = self.calibration_objects or CALIBRATION_OBJECTS
        root = self.work / f"calibration-{CALIBRATION_SEED}-{count}"
        if not (root / "manifest.json").is_file():
            shutil.rmtree(root, ignore_errors=True)
            write_calibration_set(root, CALIBRATION_SEED, count)
        return calibration_crops(root / "benchmark")


_DATA_MODULES = ("anydoor.data.synthetic", "anydoor.data.captions", "anydoor.data.world_views")


def _source_hash(modules) -> str:
    digest = hashlib.sha256()
    for name in modules:
        origin = importlib.util.find_spec(name).origin
        digest.update(name.encode())
        digest.update(Path(origin).read_bytes())
    return digest.hexdigest()


def stage_inputs(stage: Stage, manifest: dict, context: Context) -> dict:
    """What a stage's outputs depend on (hashed into its record's ``inputs``)."""
    reads = {}
    for name in stage.reads:
        record = manifest.get("stages", {}).get(name)
        if record is None:
            raise ValueError(f"stage {stage.name!r} reads stage {name!r}, which has not been run; run it first")
        reads[name] = record["outputs"]
    settings = context.settings.get(stage.name)
    return {
        "code": _source_hash(stage.modules),
        "settings": asdict(settings) if is_dataclass(settings) else None,
        "pretrain_seed": PRETRAIN_SEED,
        "objects": context.objects,
        "calibration": [CALIBRATION_SEED, context.calibration_objects],
        "reads": reads,
    }


def _hash_json(payload) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _files_of(out: Path, folder: str) -> list[dict]:
    """The files of a stage's output folder (or single file), with their sha256."""
    path = out / folder
    paths = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [{"file": p.relative_to(out).as_posix(), "sha256": sha256_file(p)} for p in paths]


def _remove(path: Path) -> None:
    if path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _files_match(out: Path, files: list[dict]) -> bool:
    return all((out / f["file"]).is_file() and sha256_file(out / f["file"]) == f["sha256"] for f in files)


# --------------------------------------------------------------------------- stage bodies


def _save_safetensors(state_dict: dict, path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous() for k, v in state_dict.items()}, str(path))


def _tokenizer(folder: Path):
    from open_clip.tokenizer import HFTokenizer

    from anydoor.data.captions import CONTEXT_LENGTH, build_caption_tokenizer

    build_caption_tokenizer(folder)
    return HFTokenizer(str(folder), context_length=CONTEXT_LENGTH)


def _run_clip(ctx: Context) -> dict:
    from anydoor.training.world_clip import train_clip

    folder = ctx.out / CLIP_DIR
    run = train_clip(ctx.settings["clip"], ctx.bank(), _tokenizer(folder), ctx.progress)
    _save_safetensors(run.model.state_dict(), folder / CLIP_WEIGHTS)
    config_dir = ctx.out / OPEN_CLIP_CONFIG_DIR
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / f"{CLIP_MODEL_NAME}.json").write_text(json.dumps(run.config, indent=1, sort_keys=True) + "\n")
    return run.log()


def _run_dino(name: str, folder: str):
    def body(ctx: Context) -> dict:
        from anydoor.training.world_dino import train_dino

        run = train_dino(ctx.settings[name], ctx.bank(), ctx.progress)
        run.backbone.save_pretrained(ctx.out / folder)
        return run.log()

    return body


def _run_dinov2(ctx: Context) -> dict:
    """The DINOv2-like backbone, stored as AnyDoor-world's ID extractor (`save_id_backbone`)."""
    from anydoor.training.world_dino import train_dino

    run = train_dino(ctx.settings["dinov2"], ctx.bank(), ctx.progress)
    save_id_backbone(run.backbone, ctx.out / DINOV2_DIR, seed=ctx.settings["dinov2"].seed)
    return run.log()


def save_id_backbone(backbone, folder: Path, seed: int) -> None:
    """Save a DINOv2-like backbone as the `DINOv2IDExtractor` folder AnyDoor-world's ``id_extractor/`` is:
    the backbone (float32) and a projector drawn from `seed` (AnyDoor-world's stage replaces it with its
    trained one; `anydoor.world.load_dinov2` reads the backbone only)."""
    import torch

    from anydoor.models.id_extractors import DINOv2IDExtractor

    extractor = DINOv2IDExtractor.from_backbone(
        backbone.float(), cross_attention_dim=TINY_CROSS_ATTENTION_DIM, image_size=ID_IMAGE_SIZE,
        generator=torch.Generator().manual_seed(seed),
    )
    extractor.save_pretrained(folder)


def _run_metric_clip(ctx: Context) -> dict:
    from anydoor.training.world_clip import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, train_clip
    from eval.calibration import zero_shot_accuracy

    settings = ctx.settings["metric_clip"]
    tokenizer = _tokenizer(ctx.work / "metric_clip_tokenizer")
    run = train_clip(settings, ctx.bank(), tokenizer, ctx.progress)
    folder = ctx.out / METRIC_CLIP_DIR
    folder.mkdir(parents=True, exist_ok=True)
    # Only the image tower ships (CLIP-I needs no text); its zero-shot accuracy is measured here.
    _save_safetensors(run.model.visual.state_dict(), folder / METRIC_CLIP_WEIGHTS)
    config = {"embed_dim": settings.embed_dim, "vision_cfg": dict(settings.vision),
              "mean": list(OPENAI_CLIP_MEAN), "std": list(OPENAI_CLIP_STD)}
    (folder / METRIC_CLIP_CONFIG).write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    zero_shot = zero_shot_accuracy(run.model, tokenizer, settings.vision["image_size"], ctx.calibration_crops(),
                                   OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)
    return {**run.log(), "zero_shot": zero_shot}


def _run_calibration(ctx: Context) -> dict:
    from eval.calibration import calibrate_world

    return calibrate_world(ctx.out, ctx.calibration_crops(), ctx.settings)


def _run_vae(ctx: Context) -> dict:
    import torch
    from diffusers import AutoencoderKL

    from anydoor.training.world_vae import held_out_crops, reconstruction_scores, train_world_vae

    settings = ctx.settings["vae"]
    held = held_out_crops(settings.image_size)
    run = train_world_vae(settings, ctx.bank(), ctx.progress, held_out=held)
    run.vae.to(torch.float16).save_pretrained(ctx.out / VAE_DIR)  # fp16 storage (issue 30)
    # The shipped (fp16) weights' scores, loaded as every user loads them.
    shipped = AutoencoderKL.from_pretrained(ctx.out / VAE_DIR, torch_dtype=torch.float32).eval()
    return {**run.log(), "shipped": reconstruction_scores(shipped, *held)}


def _run_base_unet(ctx: Context) -> dict:
    import torch
    from diffusers import AutoencoderKL
    from open_clip.tokenizer import HFTokenizer

    import open_clip
    from anydoor.data.captions import CONTEXT_LENGTH
    from anydoor.models.caption_encoder import CaptionEncoder
    from anydoor.training.world_base import train_world_base
    from anydoor.world import register_open_clip

    # This stage's inputs are files of `ctx.out` (not yet in the manifest while a rebuild runs).
    clip = open_clip.create_model(register_open_clip(ctx.out), pretrained=str(ctx.out / CLIP_DIR / CLIP_WEIGHTS))
    encoder = CaptionEncoder(clip.eval(), HFTokenizer(str(ctx.out / CLIP_DIR), context_length=CONTEXT_LENGTH))
    vae = AutoencoderKL.from_pretrained(ctx.out / VAE_DIR, torch_dtype=torch.float32).eval()
    run = train_world_base(ctx.settings["base_unet"], ctx.bank(), vae, encoder, ctx.progress)
    run.unet.to(torch.float16).save_pretrained(ctx.out / BASE_UNET_DIR)
    return run.log()


def _run_anydoor_world(ctx: Context) -> dict:
    """Train AnyDoor-world and write its pipeline folder around the shipped VAE and ID backbone."""
    import torch

    from anydoor.training.world_anydoor import train_anydoor_world

    folder = ctx.out / ANYDOOR_WORLD_DIR
    id_folder = ctx.out / DINOV2_DIR
    before = {k: v.clone() for k, v in _id_backbone_tensors(id_folder).items()}
    pipe, log = train_anydoor_world(ctx.settings["anydoor_world"], vae=ctx.out / VAE_DIR,
                                    base_unet=ctx.out / BASE_UNET_DIR, id_backbone=id_folder, work=ctx.work,
                                    progress=ctx.progress)
    # The trained weights in fp16 (issue 30's storage); the ID extractor in float32, so its backbone stays
    # the dinov2 stage's bit for bit; the VAE folder is the vae stage's and is not rewritten.
    pipe.unet.to(torch.float16).save_pretrained(folder / "unet")
    pipe.controlnet.to(torch.float16).save_pretrained(folder / "controlnet")
    pipe.scheduler.save_pretrained(folder / "scheduler")
    pipe.id_extractor.to(torch.float32).save_pretrained(id_folder)
    after = _id_backbone_tensors(id_folder)
    if after.keys() != before.keys() or not all(torch.equal(after[k], before[k]) for k in before):
        raise RuntimeError("AnyDoor-world's ID backbone differs from the shipped one: it must stay frozen")
    pipe.save_config(folder)  # model_index.json
    return log


def _id_backbone_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    weights = load_file(folder / "diffusion_pytorch_model.safetensors")
    return {k: v for k, v in weights.items() if k.startswith("backbone.")}


def stage_settings() -> dict:
    """Each model stage's settings (the calibration builds each random-init floor from them)."""
    return {"clip": CLIP_SETTINGS, "dinov2": DINOV2_SETTINGS, "metric_clip": METRIC_CLIP_SETTINGS,
            "metric_dino": METRIC_DINO_SETTINGS, "vae": VAE_SETTINGS, "base_unet": BASE_UNET_SETTINGS,
            "anydoor_world": ANYDOOR_WORLD_SETTINGS}


_CLIP_CODE = _DATA_MODULES + ("anydoor.training.world_clip",)
_DINO_CODE = _DATA_MODULES + ("anydoor.training.world_dino",)
STAGES = (
    Stage("clip", (CLIP_DIR, OPEN_CLIP_CONFIG_DIR), _CLIP_CODE, run=_run_clip),
    Stage("dinov2", (DINOV2_DIR,), _DINO_CODE, run=_run_dinov2),
    # Its log holds the zero-shot accuracy (its text tower is not shipped), measured by eval.calibration;
    # the weights do not depend on that module, so it is not among the inputs.
    Stage("metric_clip", (METRIC_CLIP_DIR,), _CLIP_CODE, run=_run_metric_clip),
    Stage("metric_dino", (METRIC_DINO_DIR,), _DINO_CODE, run=_run_dino("metric_dino", METRIC_DINO_DIR)),
    Stage("calibration", (), _DATA_MODULES + ("eval.calibration", "eval.backbones", "anydoor.world"),
          reads=("clip", "dinov2", "metric_clip", "metric_dino"), run=_run_calibration),
    Stage("vae", (VAE_DIR,), _DATA_MODULES + ("anydoor.data.world_scenes", "anydoor.training.vae",
                                              "anydoor.training.world_vae"), run=_run_vae),
    Stage("base_unet", (BASE_UNET_DIR,), _DATA_MODULES + ("anydoor.data.world_scenes", "anydoor.training.world_vae",
                                                          "anydoor.training.world_base",
                                                          "anydoor.models.caption_encoder"),
          reads=("clip", "vae"), run=_run_base_unet),
    Stage("anydoor_world", tuple(f"{ANYDOOR_WORLD_DIR}/{name}" for name in ("unet", "controlnet", "scheduler",
                                                                          "model_index.json")),
          _DATA_MODULES + ("anydoor.training.world_anydoor", "anydoor.training.loop", "anydoor.training.pair_pool",
                           "anydoor.training.timesteps", "anydoor.data.pairs", "anydoor.models.denoiser"),
          reads=("dinov2", "vae", "base_unet"), run=_run_anydoor_world, updates={"dinov2": DINOV2_DIR}),
)
assert tuple(s.name for s in STAGES) == STAGE_NAMES, "anydoor.world.STAGE_NAMES must list STAGES in order"


# --------------------------------------------------------------------------- the runner


def _commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        # Tracked changes only: the stage's own outputs are new files while it runs.
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--",
                                "anydoor", "eval"], capture_output=True, text=True, check=True)
        return sha.stdout.strip() + ("+uncommitted" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _write_manifest(out: Path, manifest: dict) -> None:
    files = {}
    for name in STAGE_NAMES:  # a file another stage updates is listed by both, with the same hash
        files.update({f["file"]: f for f in manifest["stages"].get(name, {}).get("files", [])})
    manifest["files"] = sorted(files.values(), key=lambda f: f["file"])
    tmp = out / f"{MANIFEST}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(out / MANIFEST)


def pretrain_world(out: str | PathLike, only=None, work: str | PathLike = "outputs/world-work", progress: bool = True,
                   command: str | None = None, log=print, settings: dict | None = None,
                   objects: int = PRETRAIN_OBJECTS, calibration_objects: int | None = None) -> dict:
    """Run the stages of `STAGES` whose inputs changed into `out`; returns the manifest.

    Args:
        out: the output folder (``anydoor/world`` to ship).
        only: stage names to consider (default all); the others are left as they are.
        work: scratch folder (the calibration set, the metric CLIP's tokenizer).
        settings: stage name -> settings replacing `stage_settings()`'s (tests train tiny runs).
        objects, calibration_objects: sizes of the pretraining split and the calibration set.
    """
    out = Path(out)
    only = list(STAGE_NAMES) if not only else list(only)
    unknown = [name for name in only if name not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; stages: {', '.join(STAGE_NAMES)}")
    ctx = Context(out=out, work=Path(work), settings={**stage_settings(), **(settings or {})}, objects=objects,
                  calibration_objects=calibration_objects, progress=progress)
    out.mkdir(parents=True, exist_ok=True)
    ctx.work.mkdir(parents=True, exist_ok=True)
    path = out / MANIFEST
    manifest = json.loads(path.read_text()) if path.is_file() else {}
    manifest.setdefault("stages", {})
    # The command that rebuilds everything; each stage records the command that ran it.
    manifest.update(pretrain_seed=PRETRAIN_SEED, calibration_seed=CALIBRATION_SEED, objects=objects,
                    command=f"anydoor pretrain-world --out {out}")
    for stage in STAGES:
        if stage.name not in only:
            continue
        key = _hash_json(stage_inputs(stage, manifest, ctx))
        record = manifest["stages"].get(stage.name)
        if record and record.get("inputs") == key and _files_match(out, record.get("files", [])):
            log(f"[pretrain-world] {stage.name}: up to date (inputs {key[:12]})")
            continue
        log(f"[pretrain-world] {stage.name}: training")
        for folder in stage.folders:
            _remove(out / folder)
        start = time.perf_counter()
        result = stage.run(ctx)
        seconds = time.perf_counter() - start
        files = [f for folder in (*stage.folders, *stage.updates.values()) for f in _files_of(out, folder)]
        for owner, folder in stage.updates.items():
            manifest["stages"][owner]["files"] = _files_of(out, folder)
        record = {"inputs": key, "seconds": round(seconds, 1), "files": files, "log": result, "commit": _commit(),
                  "command": command or f"anydoor pretrain-world --out {out}",
                  "outputs": _hash_json(files if files else result)}
        manifest["stages"][stage.name] = record
        if stage.name == "calibration":
            manifest["calibration"] = result
        _write_manifest(out, manifest)
        log(f"[pretrain-world] {stage.name}: done in {seconds:.0f} s")
    _write_manifest(out, manifest)
    return manifest
