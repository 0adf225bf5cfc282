"""A pool of prepared training pairs: the frozen work of a training step, done once.

A training step of the embedded default spends a third of its time on work
whose result never changes: preparing the pair (crops, HF map, collage), the
frozen VAE's encode of the target and the frozen ID backbone's forward
(profile in docs/SPEED.md). The pool prepares ``size`` pairs once, from the
same item stream training would read (item k is item ``k mod len`` of epoch
``k // len`` of the training mixture), and keeps per pair:

- ``moments``: the VAE posterior's mean and log-variance, concatenated as
  diffusers' `DiagonalGaussianDistribution` holds them; the latent is still
  *drawn* per step from the training generator, as without the pool;
- ``hint``: the collage (detail map + mask channel);
- ``features``: the frozen ID backbone's tokens before the trainable projector
  (`_FrozenBackboneIDExtractor.backbone_features`);
- ``kind``: the source kind ATS reads.

The pool lives on disk under a key of everything its content depends on (data
sources, seed, size, pair geometry, detail map, background removal, ID
extractor and the weights of the frozen VAE and backbone). Arms of a sweep that
agree on the key load the same file and read it in the same order (epoch e is
the permutation ``default_rng([seed, e])`` of the pool): common random numbers
in training as in evaluation. ATS, learning rate, steps and the trainable set
are not part of the key: arms that differ only there train on identical pairs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file
from torch.utils.data import default_collate
from tqdm.auto import tqdm

POOL_FILE = "pool.safetensors"
META_FILE = "pool.json"
PREPARE_BATCH = 32  # pairs per frozen forward while building


def state_fingerprint(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, shapes, dtypes, values)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def pool_key(config, vae: torch.nn.Module, id_extractor, image_size: int) -> str:
    """The key of a config's pool: a hash of everything the pool's tensors depend on."""
    model = config.model
    inputs = {
        "data": [
            {"path": str(Path(s.path).resolve()), "loader": s.loader, "kind": s.kind, "weight": s.weight, "masks": s.masks}
            for s in config.data
        ],
        "samples_per_epoch": config.samples_per_epoch,
        "seed": config.seed,
        "size": config.pair_pool,
        "image_size": image_size,
        "detail_map": model.detail_map,
        "remove_background": model.remove_background,
        "id_extractor": [type(id_extractor).__name__, getattr(id_extractor, "tokens", None)],
        "vae": state_fingerprint(vae),
        "id_backbone": state_fingerprint(id_extractor.backbone),
    }
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class PairPool:
    """Prepared pairs: tensors with a leading pool axis, and each pair's source kind."""

    moments: torch.Tensor  # (N, 2C, h, w) VAE posterior mean and log-variance
    hint: torch.Tensor  # (N, 4, S, S)
    features: torch.Tensor  # (N, T, D) frozen ID backbone tokens
    kinds: list[str]
    key: str = ""

    def __len__(self) -> int:
        return len(self.kinds)

    def __getitem__(self, i: int) -> dict:
        return {"moments": self.moments[i], "hint": self.hint[i], "features": self.features[i], "kind": self.kinds[i]}

    def epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        """The order pairs are read in pool epoch `epoch`: the same for every arm with this seed."""
        return np.random.default_rng([seed, epoch]).permutation(len(self))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"moments": self.moments, "hint": self.hint, "features": self.features}
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / POOL_FILE)
        # Written last: its presence says the pool is complete.
        (folder / META_FILE).write_text(json.dumps({"key": self.key, "kinds": self.kinds}) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "PairPool":
        meta = json.loads((folder / META_FILE).read_text())
        tensors = load_file(folder / POOL_FILE)
        return cls(tensors["moments"], tensors["hint"], tensors["features"], list(meta["kinds"]), meta["key"])


@torch.no_grad()
def prepare_pool(dataset, size: int, vae, id_extractor, key: str = "", progress: bool = True) -> PairPool:
    """Prepare the first `size` items of `dataset`'s item stream (epochs in turn) into a `PairPool`."""
    if size < 1:
        raise ValueError(f"pair_pool must be >= 1 pairs, got {size!r}")
    n = len(dataset)
    moments, hints, features, kinds = [], [], [], []
    vae_device = next(vae.parameters()).device
    id_device = next(id_extractor.parameters()).device
    for start in tqdm(range(0, size, PREPARE_BATCH), desc="pair pool", disable=not progress, dynamic_ncols=True):
        items = []
        for k in range(start, min(start + PREPARE_BATCH, size)):
            dataset.set_epoch(k // n)
            items.append(dataset[k % n])
        batch = default_collate(items)
        moments.append(vae.encode(batch["target"].to(vae_device)).latent_dist.parameters.float().cpu())
        features.append(id_extractor.backbone_features(batch["reference"].to(id_device)).float().cpu())
        hints.append(batch["hint"])
        kinds += list(batch["kind"])
    dataset.set_epoch(0)
    return PairPool(torch.cat(moments), torch.cat(hints), torch.cat(features), kinds, key)


def load_or_prepare_pool(folder: Path, key: str, build) -> PairPool:
    """The pool under ``folder/key``: loaded if complete, else built by ``build(key)`` and saved.

    A file lock makes parallel runs that need the same pool build it once: the
    others wait, then load it.
    """
    target = Path(folder) / key
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / META_FILE).is_file():
            pool = PairPool.load(target)
            if pool.key != key:
                raise ValueError(f"pair pool {str(target)!r} holds key {pool.key!r}, expected {key!r}; remove the folder")
            return pool
        pool = build(key)
        pool.save(target)
        return pool


def pool_batches(pool: PairPool, seed: int, batch_size: int, process_index: int, num_processes: int,
                 epoch: int, items_done: int):
    """Yield (epoch, items done after this batch, batch) forever over the pool, like `_micro_batches` over data.

    Pool epoch e reads the pairs in `PairPool.epoch_order(seed, e)`; global
    batch b of it holds positions [b*G, (b+1)*G), G = batch size x processes.
    """
    global_batch = batch_size * num_processes
    batches_per_epoch = len(pool) // global_batch
    while True:
        order = pool.epoch_order(seed, epoch)
        for b in range(items_done // global_batch, batches_per_epoch):
            lo = b * global_batch + process_index * batch_size
            yield epoch, (b + 1) * global_batch, default_collate([pool[int(j)] for j in order[lo : lo + batch_size]])
        epoch, items_done = epoch + 1, 0
