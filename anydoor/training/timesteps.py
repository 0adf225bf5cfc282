"""Training timestep samplers: uniform and AnyDoor's adaptive timestep sampling (ATS).

AnyDoor (Chen et al., CVPR 2024, Sec. 3.4; DESIGN.md "Data sources and
adaptive timestep sampling"): early, noisy steps decide pose and structure,
late steps decide texture. Video pairs (large pose change) therefore train
the noisy half of the schedule, single images (same pose) the clean half,
multi-view / high-quality video the whole range; with probability 0.3 any
sample draws uniformly instead. The "uniform" baseline is DDPM's usual rule.

The scheme is an ablation axis chosen by name (`TIMESTEP_SCHEMES`); every rule
consumes the same random draws whatever the kinds, so two arms trained with
the same generator see the same noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

TIMESTEP_SCHEMES = ("uniform", "ats")

# Fraction [lo, hi) of the schedule each source kind trains under ATS.
ATS_RANGES = {"video": (0.5, 1.0), "image": (0.0, 0.5), "multiview": (0.0, 1.0)}
# Probability that an ATS sample ignores its kind and draws from the whole range.
ATS_UNIFORM_PROB = 0.3


def _uniform_ranges(kinds: Sequence[str], num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform: t ~ U{0, ..., T-1} for every sample (DDPM, Ho et al. 2020, Alg. 1)."""
    n = len(kinds)
    return torch.zeros(n, dtype=torch.long), torch.full((n,), num_train_timesteps, dtype=torch.long)


def _ats_ranges(
    kinds: Sequence[str], num_train_timesteps: int, coin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ATS (AnyDoor Sec. 3.4): video -> [T/2, T), image -> [0, T/2),
    multiview -> [0, T); with probability 0.3 [0, T) whatever the kind."""
    fractions = torch.tensor([ATS_RANGES[k] for k in kinds], dtype=torch.float64).reshape(-1, 2)
    lo, hi = (fractions * num_train_timesteps).round().long().unbind(1)
    uniform = coin < ATS_UNIFORM_PROB
    return lo.masked_fill(uniform, 0), hi.masked_fill(uniform, num_train_timesteps)


def sample_timesteps(
    kinds: Sequence[str],
    scheme: str,
    generator: torch.Generator,
    num_train_timesteps: int = 1000,
) -> torch.LongTensor:
    """Draw one training timestep per sample.

    Args:
        kinds: the source kind of each sample in the batch ("video", "image"
            or "multiview"; `anydoor.data.pairs.KINDS`).
        scheme: "uniform" (t ~ U[0, T)) or "ats" (AnyDoor's adaptive
            timestep sampling, see `_ats_ranges`).
        generator: a CPU `torch.Generator`; the only source of randomness.
            Each call draws exactly 2 * len(kinds) uniforms, whatever the
            scheme and kinds, so arms stay aligned on the generator.
        num_train_timesteps: T, the training schedule's length (1000 in SD).

    Returns:
        (B,) int64 tensor on the CPU, each t in [lo, hi) of its rule.
    """
    if scheme not in TIMESTEP_SCHEMES:
        raise ValueError(f"scheme must be one of {TIMESTEP_SCHEMES}, got {scheme!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")
    if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {num_train_timesteps!r}")
    if isinstance(kinds, str) or not isinstance(kinds, Sequence):
        raise TypeError(f"kinds must be a sequence of kind names, got {type(kinds).__name__} {kinds!r}")
    unknown = sorted({k for k in kinds if k not in ATS_RANGES}, key=str)
    if unknown:
        raise ValueError(f"kinds holds {unknown}, not among {tuple(ATS_RANGES)}")

    n = len(kinds)
    coin = torch.rand(n, generator=generator, dtype=torch.float64)
    position = torch.rand(n, generator=generator, dtype=torch.float64)
    if scheme == "ats":
        lo, hi = _ats_ranges(kinds, num_train_timesteps, coin)
    else:
        lo, hi = _uniform_ranges(kinds, num_train_timesteps)
    # floor(u * width) < width for u < 1; the clamp guards the last ulp.
    offset = torch.minimum((position * (hi - lo)).floor().long(), hi - lo - 1)
    return lo + offset
