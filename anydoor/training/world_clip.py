"""The embedded world's CLIP-like models: open_clip `CLIP`, trained contrastively on captions.

OpenCLIP (Ilharco et al. 2021; Radford et al. 2021) learned its towers from
(image, alt-text) pairs with the symmetric InfoNCE loss (open_clip's
`ClipLoss`). The in-world counterpart learns from renders of the pretraining
split (`anydoor.data.world_views`) and their category-level captions
(`anydoor.data.captions`): a tiny ViT image tower and a tiny text tower over
a word-level vocabulary. Two models are trained this way (DESIGN.md
section 4): the ID model, whose vision tower is the `clip` arm's ID backbone
and whose text tower's per-token states condition the world's base UNet,
and the CLIP-I metric model, of another shape and seed, whose image tower
alone is shipped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from anydoor.data.captions import CONTEXT_LENGTH, vocabulary_size
from anydoor.data.world_views import render_batch

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class ClipSettings:
    """One CLIP-like model and its training run."""

    vision: dict  # open_clip CLIPVisionCfg fields (image_size, layers, width, head_width, patch_size)
    embed_dim: int = 64  # joint embedding width
    text_width: int = 64  # the text tower's token width (= the UNet's cross-attention width for the ID model)
    text_heads: int = 4
    text_layers: int = 4  # SD2.1 reads the penultimate layer's tokens: layer 3 of 4
    render_size: int = 64  # renders are made at the world's crop size, then resized to vision["image_size"]
    steps: int = 800
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    white_prob: float = 0.4  # share of renders on white (background removed), what the ID extractor sees
    seed: int = 0

    def __post_init__(self):
        for name in ("embed_dim", "text_width", "text_heads", "text_layers", "render_size", "steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.text_width % self.text_heads:
            raise ValueError(f"text_width {self.text_width} must be a multiple of text_heads {self.text_heads}")


def model_config(settings: ClipSettings) -> dict:
    """The open_clip model config (the JSON `open_clip.add_model_config` registers)."""
    return {
        "embed_dim": settings.embed_dim,
        "vision_cfg": dict(settings.vision),
        "text_cfg": {
            "context_length": CONTEXT_LENGTH,
            "vocab_size": vocabulary_size(),
            "width": settings.text_width,
            "heads": settings.text_heads,
            "layers": settings.text_layers,
            "pad_id": 0,
            "pool_type": "argmax",  # the [EOT] token has the largest id (captions.build_caption_tokenizer)
        },
    }


def build_model(config: dict, seed: int):
    """An open_clip `CLIP` from a model config, its random init drawn from `seed`."""
    from open_clip.model import CLIP

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIP(**config, output_dict=True)


def preprocess(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 (B, S, S, 3) renders -> the towers' (B, 3, size, size) input: bilinear resize (as the
    reference is resized to 224 px) and OpenAI CLIP's normalisation."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (x.clamp(0.0, 1.0) - mean) / std


def _cosine_lr(step: int, settings: ClipSettings) -> float:
    if step < settings.warmup_steps:
        return settings.learning_rate * (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return settings.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model, weight_decay: float) -> list[dict]:
    # As open_clip's training: no decay on gains, biases, embeddings and the logit scale.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name
        exclude = exclude or "embedding" in name or "token" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


@dataclass
class ClipRun:
    model: object  # open_clip CLIP
    config: dict
    seconds: float
    losses: list[float] = field(default_factory=list)

    def log(self) -> dict:
        return {"seconds": round(self.seconds, 1), "loss_first": self.losses[0], "loss_last": float(np.mean(self.losses[-20:]))}


def train_clip(settings: ClipSettings, bank: list, tokenizer, progress: bool = True, batches=None) -> ClipRun:
    """Train a CLIP-like model on renders of `bank` (`world_views.world_objects`) and their captions.

    Args:
        bank: the pretraining split's objects.
        tokenizer: the caption tokenizer (open_clip `HFTokenizer` over `captions.build_caption_tokenizer`).
        batches: an iterator of `RenderedBatch`es to train on instead of fresh renders of `bank`
            (e.g. one batch repeated, to check that the recipe can fit it).
    """
    from open_clip.loss import ClipLoss

    config = model_config(settings)
    model = build_model(config, settings.seed)
    model.train()
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, settings.weight_decay), lr=settings.learning_rate,
                                  betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, 1]))
    size = settings.vision["image_size"]
    run = ClipRun(model=model, config=config, seconds=0.0)
    start = time.perf_counter()
    for step in tqdm(range(settings.steps), desc="clip", disable=not progress):
        if batches is None:
            batch = render_batch(bank, settings.batch_size, settings.render_size, rng, settings.white_prob)
        else:
            batch = next(batches)
        images = preprocess(batch.images, size)
        texts = tokenizer(batch.captions(rng))
        for group in optimizer.param_groups:
            group["lr"] = _cosine_lr(step, settings)
        out = model(images, texts)
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # as open_clip: the temperature stays at most 100
            model.logit_scale.clamp_(0, math.log(100))
        run.losses.append(loss.item())
    run.seconds = time.perf_counter() - start
    model.eval()
    return run


