"""The fidelity ladder of a benchmark for one or more VAEs (`eval.fidelity_ladder`, issue 30).

    python benchmarks/fidelity_ladder.py --benchmark data/synthetic/benchmark \\
        --vae world=world --vae before=outputs/vae --out outputs/fidelity_ladder

``--vae NAME=FOLDER`` (repeatable): a diffusers `AutoencoderKL` folder, or
``world`` for the shipped world VAE. Scores with the in-world metric
backbones (``--metric-backbones``: world | real | random). Writes
``ladder.csv`` (every row, a ``vae`` column) and ``ladder.md`` (one table per
VAE, plus the decode time of one 64 px crop).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch


def _load_vae(folder: str):
    from diffusers import AutoencoderKL

    from anydoor import world

    if folder == "world":
        return world.load_vae()
    return AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()


@torch.no_grad()
def decode_ms(vae, side: int = 64, repeats: int = 30) -> float:
    """Median wall time (ms) of decoding one side x side crop's latents on this machine."""
    z = vae.encode(torch.zeros(1, 3, side, side)).latent_dist.mode()
    for _ in range(3):
        vae.decode(z)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        vae.decode(z)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--benchmark", type=Path, required=True)
    parser.add_argument("--vae", action="append", default=[], metavar="NAME=FOLDER",
                        help="a VAE to put through the ladder (repeatable); FOLDER 'world' = the shipped one")
    parser.add_argument("--metric-backbones", default="world", choices=("world", "real", "random"))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("outputs/fidelity_ladder"))
    args = parser.parse_args(argv)
    from eval.backbones import load_backbones
    from eval.fidelity_ladder import fidelity_ladder, format_ladder, ladder_table

    vaes = {}
    for spec in args.vae or ["world=world"]:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--vae must be NAME=FOLDER, got {spec!r}")
        vaes[name] = folder
    backbones = load_backbones(metric_backbones=args.metric_backbones)
    args.out.mkdir(parents=True, exist_ok=True)
    frames, sections = [], []
    for name, folder in vaes.items():
        vae = _load_vae(folder)
        rows = fidelity_ladder(args.benchmark, vae, backbones, args.image_size).assign(vae=name)
        frames.append(rows)
        sections.append(f"### VAE `{name}` ({folder}); decoding one {args.image_size} px crop: "
                        f"{decode_ms(vae, args.image_size):.1f} ms\n\n{format_ladder(ladder_table(rows), backbones.source)}\n")
    pd.concat(frames).to_csv(args.out / "ladder.csv", index=False)
    text = f"Fidelity ladder of {args.benchmark} ({frames[0]['pair_id'].nunique()} pairs)\n\n" + "\n".join(sections)
    (args.out / "ladder.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
