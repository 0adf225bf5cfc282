"""The embedded default's tiny VAE: trained once for reconstruction, cached, shared by every arm.

DESIGN.md section 4: the embedded default is latent diffusion like the real
model, with a tiny `AutoencoderKL` (x4 downsampling, 16x16x4 latents at 64 px)
trained on the synthetic images for reconstruction plus a small KL term (as
SD's VAE, Rombach et al. 2022, Sec. 3, without the perceptual and adversarial
terms). The reconstruction term weights the chroma part of the error up
(`reconstruction_loss`): with plain RGB MSE the tiny VAE learns luminance
first and, in its 1000 steps, keeps one colour axis only (a green object
came back grey, a yellow one pink). Its ``scaling_factor`` is 1 / (standard deviation of the latents),
the rule that gave SD its 0.18215, so the diffusion model sees unit-variance
latents.

`ensure_tiny_vae` returns a cached VAE when its key (the training settings
and the hash of every image file) matches, and trains one otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from anydoor.training.checkpoints import cached_folder

META_FILE = "vae_meta.json"
IMAGE_GLOBS = ("videos/JPEGImages/*/*.jpg", "images/images/*.jpg", "images/images/*.png")
HELD_OUT_EVERY = 8  # every 8th image (sorted by path) is held out for PSNR and the latent std
_KEY_VERSION = 2  # bump when the training recipe below changes meaning (2: chroma-weighted loss)


@dataclass(frozen=True)
class VAETrainSettings:
    steps: int = 1000  # Adam steps (about 19-20 dB held-out PSNR; the PSNR still rises slowly after)
    batch_size: int = 8  # crops per step
    learning_rate: float = 2e-3  # halved for the last third
    kl_weight: float = 1e-6  # weight of the KL term (summed over latent dims) against the per-pixel MSE sum
    chroma_weight: float = 3.0  # extra weight of the error's chroma part (`reconstruction_loss`); 0 = plain MSE
    image_size: int = 64  # crop side after resizing (the diffusion model's S)
    patch_size: int = 32  # training window inside each resized crop: 4x cheaper than whole crops
    min_crop: float = 0.35  # smallest crop side as a fraction of the image's short side
    seed: int = 0  # init, crops, posterior samples

    def __post_init__(self):
        for name, minimum in (("steps", 1), ("batch_size", 1), ("seed", 0), ("image_size", 8), ("patch_size", 8)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
        for name in ("image_size", "patch_size"):
            if getattr(self, name) % 4:
                raise ValueError(f"{name} must be a multiple of 4 (the VAE downsamples x4), got {getattr(self, name)}")
        if self.patch_size > self.image_size:
            raise ValueError(f"patch_size={self.patch_size} must not exceed image_size={self.image_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        for name in ("kl_weight", "chroma_weight"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 < self.min_crop <= 1:
            raise ValueError(f"min_crop must lie in (0, 1], got {self.min_crop!r}")


def find_images(data_dir: str | PathLike) -> list[Path]:
    """The synthetic data set's training images (video frames and single images), sorted."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {str(root)!r} is not a folder; write one with `anydoor synth-data DIR`")
    files = sorted({p for pattern in IMAGE_GLOBS for p in root.glob(pattern)})
    if len(files) < 2:
        raise ValueError(
            f"data_dir {str(root)!r} holds {len(files)} training images ({', '.join(IMAGE_GLOBS)}); "
            "need at least 2 (one is held out)"
        )
    return files


def load_training_images(files: list[Path]) -> list[torch.Tensor]:
    """The images as (3, H, W) float32 tensors in [-1, 1] (the VAE's range)."""
    images = []
    for path in files:
        with PIL.Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
        images.append(torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 127.5 - 1.0)
    return images


def _crop(image: torch.Tensor, box: tuple[int, int, int], size: int, flip: bool) -> torch.Tensor:
    y, x, side = box
    crop = image[:, y : y + side, x : x + side].unsqueeze(0)
    crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return crop.flip(-1) if flip else crop


def random_scene_crops(
    images: list[torch.Tensor],
    n: int,
    rng: np.random.Generator,
    image_size: int,
    patch_size: int | None = None,
    min_crop: float = VAETrainSettings.min_crop,
) -> torch.Tensor:
    """(n, 3, patch_size, patch_size) training crops of `load_training_images` images.

    Square crops of random image, position, scale (side from ``min_crop`` x
    the short side to all of it) and horizontal flip, resized to
    ``image_size`` (the scales at which AnyDoor's target crops, box x 1.3-3.0,
    show the scenes), then a random ``patch_size`` window of each (default: the
    whole crop; the VAE is convolutional, so it trains on windows). The
    window is drawn even when it is the whole crop, so the draws from `rng`
    do not depend on ``patch_size``.
    """
    patch_size = image_size if patch_size is None else patch_size
    crops = []
    for _ in range(n):
        image = images[int(rng.integers(len(images)))]
        short = min(image.shape[1:])
        side = int(rng.integers(max(2, round(min_crop * short)), short + 1))
        y = int(rng.integers(image.shape[1] - side + 1))
        x = int(rng.integers(image.shape[2] - side + 1))
        crop = _crop(image, (y, x, side), image_size, bool(rng.random() < 0.5))
        py, px = (int(v) for v in rng.integers(image_size - patch_size + 1, size=2))
        crops.append(crop[:, py : py + patch_size, px : px + patch_size])
    return torch.stack(crops)


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, chroma_weight: float) -> torch.Tensor:
    """Per-sample reconstruction loss (B,): the squared error summed over pixels
    and channels, plus `chroma_weight` x the squared error of its chroma part
    (the error minus its mean over the RGB channels, i.e. what a grey shift
    cannot explain).

    An error equal on the three channels (a brightness error) costs its plain
    squared error; a hue error costs up to (1 + chroma_weight) times more. Why:
    the synthetic objects' colours are saturated but cover a small share of
    the pixels, so under plain MSE the tiny VAE spends its first thousand
    steps on luminance (measured on the benchmark's target crops: plain MSE
    13.6 dB in the object mask, with hues wrong; chroma weight 3: 15.3 dB,
    hues right; the same 18.8-18.9 dB on whole held-out crops).
    """
    error = recon - target
    chroma = error - error.mean(dim=1, keepdim=True)
    return (error.square() + chroma_weight * chroma.square()).sum(dim=(1, 2, 3))


def _held_out_crops(images: list[torch.Tensor], size: int) -> torch.Tensor:
    """Deterministic evaluation crops: each held-out image whole and its centre half."""
    crops = []
    for image in images:
        short = min(image.shape[1:])
        crops.append(_crop(image, ((image.shape[1] - short) // 2, (image.shape[2] - short) // 2, short), size, False))
        half = short // 2
        crops.append(_crop(image, ((image.shape[1] - half) // 2, (image.shape[2] - half) // 2, half), size, False))
    return torch.stack(crops)


@torch.no_grad()
def reconstruction_psnr(vae, images: torch.Tensor) -> float:
    """PSNR (dB, images in [-1, 1] mapped to [0, 1]) of decode(mode(encode(x))), over the whole batch."""
    vae.eval()
    recon = vae.decode(vae.encode(images).latent_dist.mode(), return_dict=False)[0].clamp(-1, 1)
    mse = F.mse_loss((recon + 1) / 2, (images + 1) / 2).item()
    return float(10 * np.log10(1.0 / max(mse, 1e-12)))


def _file_digest(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def cache_key(data_dir: str | PathLike, settings: VAETrainSettings) -> str:
    """Hash of the VAE config, the training settings and every training image's bytes."""
    from anydoor.presets import tiny_vae_config

    root = Path(data_dir)
    files = find_images(root)
    payload = json.dumps(
        {"version": _KEY_VERSION, "vae": tiny_vae_config(), "settings": asdict(settings), "data": _file_digest(files, root)},
        sort_keys=True, default=list,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def train_vae(
    data_dir: str | PathLike,
    out_dir: str | PathLike,
    steps: int = VAETrainSettings.steps,
    batch_size: int = VAETrainSettings.batch_size,
    seed: int = 0,
    image_size: int = VAETrainSettings.image_size,
    learning_rate: float = VAETrainSettings.learning_rate,
    kl_weight: float = VAETrainSettings.kl_weight,
    chroma_weight: float = VAETrainSettings.chroma_weight,
    patch_size: int = VAETrainSettings.patch_size,
    progress: bool = True,
) -> dict:
    """Train the tiny AutoencoderKL (`anydoor.presets.tiny_vae_config`) on the
    synthetic images and save it to `out_dir` (atomically) with ``vae_meta.json``.

    Loss: `reconstruction_loss` (the squared error summed over pixels, its
    chroma part weighted up by ``chroma_weight``) + ``kl_weight`` x
    KL(q(z|x) || N(0, I)), averaged over the batch (SD's VAE weighting). Every 8th image is held out;
    PSNR is measured on whole image_size crops of those, and the saved
    ``scaling_factor`` is 1 / std of posterior samples on them.

    Returns:
        the metadata written to ``vae_meta.json``: cache key, held-out PSNR of
        the trained and of the untrained VAE, latent std, scaling factor,
        training time.
    """
    settings = VAETrainSettings(
        steps=steps, batch_size=batch_size, learning_rate=float(learning_rate), kl_weight=float(kl_weight),
        chroma_weight=float(chroma_weight), image_size=image_size, patch_size=patch_size, seed=seed,
    )
    return _train_into(data_dir, out_dir, settings, progress, reuse=False)


def _train_into(data_dir: str | PathLike, out_dir: str | PathLike, settings: VAETrainSettings, progress: bool,
                reuse: bool) -> dict:
    """`train_vae` into `out_dir` (atomically, with ``vae_meta.json``), or
    nothing when `reuse` and `out_dir` holds a VAE of the same cache key."""
    root = Path(data_dir)
    key = cache_key(root, settings)
    return cached_folder(out_dir, key, META_FILE, lambda folder: _train(folder, root, settings, progress), reuse=reuse)


def _train(folder: Path, root: Path, settings: VAETrainSettings, progress: bool) -> dict:
    """Train the VAE, save it (scaling factor set) into `folder`; return its metadata but the cache key."""
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    from anydoor.presets import tiny_vae_config

    files = find_images(root)
    held_files = files[::HELD_OUT_EVERY]
    train_files = [f for i, f in enumerate(files) if i % HELD_OUT_EVERY]
    train_images = load_training_images(train_files)
    held = _held_out_crops(load_training_images(held_files), settings.image_size)

    # Init from its own seed, without touching the caller's global RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        vae = AutoencoderKL(**{**tiny_vae_config(), "sample_size": settings.image_size})
    psnr_untrained = reconstruction_psnr(vae, held)
    rng = np.random.default_rng(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = torch.optim.Adam(vae.parameters(), lr=settings.learning_rate)
    # Halve the lr for the last third: cheap sharpening of the reconstructions.
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[2 * settings.steps // 3], gamma=0.5)

    start = time.perf_counter()
    vae.train()
    bar = tqdm(range(settings.steps), desc="train-vae", disable=not progress, dynamic_ncols=True)
    for _ in bar:
        x = random_scene_crops(
            train_images, settings.batch_size, rng, settings.image_size, settings.patch_size, settings.min_crop
        )
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=generator), return_dict=False)[0]
        reconstruction = reconstruction_loss(recon, x, settings.chroma_weight).mean()
        loss = reconstruction + settings.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        bar.set_postfix(loss=f"{reconstruction.item() / x[0].numel():.4f}")
    seconds = time.perf_counter() - start

    with torch.no_grad():
        vae.eval()
        latents = vae.encode(held).latent_dist.sample(generator=generator)
        latent_std = float(latents.std())
    vae.register_to_config(scaling_factor=1.0 / latent_std)
    meta = {
        "psnr_held_out": reconstruction_psnr(vae, held),
        "psnr_untrained": psnr_untrained,
        "latent_std": latent_std,
        "scaling_factor": 1.0 / latent_std,
        "train_seconds": seconds,
        "train_images": len(train_files),
        "held_out_images": len(held_files),
        "settings": asdict(settings),
        "data_dir": str(root),
    }
    vae.save_pretrained(folder)
    return meta


def ensure_tiny_vae(data_dir: str | PathLike, cache_dir: str | PathLike, progress: bool = True, **settings) -> Path:
    """The trained tiny VAE folder for `data_dir`: `cache_dir` if its key
    matches (same settings, same image bytes), else trained into it.

    ``settings`` are `train_vae`'s keyword arguments (`VAETrainSettings` fields)."""
    known = set(VAETrainSettings.__dataclass_fields__) - {"min_crop"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise TypeError(f"ensure_tiny_vae got unknown settings {unknown}; known: {sorted(known)}")
    _train_into(data_dir, cache_dir, VAETrainSettings(**settings), progress, reuse=True)
    return Path(cache_dir)
