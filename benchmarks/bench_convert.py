"""Peak memory and wall time of converting a full-size released-layout checkpoint.

Writes a Lightning-style checkpoint with the released key set and shapes
(released_checkpoint_manifest.json: 1,855 tensors, 2.45B parameters) filled
with zeros (the schedule buffers hold the real schedule, which the converter
checks), optionally padded with fake optimizer state, then converts it with
`anydoor.convert_released.convert_released_checkpoint` in a fresh process and
prints that process's peak RSS and wall time beside the file and weight
sizes. The point: memory follows the kept weights, not the file.

    python benchmarks/bench_convert.py --workdir /tmp/bench_convert [--dtype float16] [--optimizer-gb 2]

Needs free disk for the checkpoint plus the converted folder (about 2 x 4.9 GB
in float16); both are deleted at the end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST_NAME = "released_checkpoint_manifest.json"
DTYPES = ("float16", "float32", "bfloat16")


def _default_manifest() -> Path | None:
    for path in (ROOT / "tests" / "data" / MANIFEST_NAME, ROOT.parent / "shared" / MANIFEST_NAME):
        if path.is_file():
            return path
    return None


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def write_checkpoint(manifest: Path, path: Path, dtype: str, optimizer_gb: float) -> dict:
    import torch

    tensors = json.loads(manifest.read_text())["tensors"]
    schedule = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    state_dict = {}
    for key, shape in tensors.items():
        state_dict[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
    for key in ("betas", "alphas_cumprod"):  # float32 buffers, as LatentDiffusion registers them
        state_dict[key] = schedule.float() if key == "betas" else torch.cumprod(1 - schedule, 0).float()
    optimizer = [{"state": {0: {"exp_avg": torch.zeros(int(optimizer_gb * 2**30 / 4))}}, "param_groups": []}]
    torch.save({"state_dict": state_dict, "optimizer_states": optimizer, "epoch": 1, "global_step": 1}, path)
    weights = sum(t.numel() * t.element_size() for t in state_dict.values())
    return {"file_gib": path.stat().st_size / 2**30, "weights_gib": weights / 2**30, "writer_peak_rss_gib": _peak_rss_gib()}


def convert(checkpoint: Path, out: Path) -> dict:
    start = time.perf_counter()
    from anydoor.convert_released import convert_released_checkpoint

    imported = time.perf_counter()
    convert_released_checkpoint(checkpoint, out)
    done = time.perf_counter()
    record = json.loads((out / "conversion.json").read_text())
    saved = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    return {
        "convert_seconds": done - imported,
        "import_seconds": imported - start,
        "converter_peak_rss_gib": _peak_rss_gib(),
        "kept_tensors": record["source"]["kept_tensors"],
        "saved_gib": saved / 2**30,
    }


def _stage(*args: str) -> dict:
    """Run one stage in a fresh interpreter so its peak RSS is its own."""
    result = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", type=Path, default=_default_manifest(), help=MANIFEST_NAME)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_convert"), help="scratch folder (big files)")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="dtype of the fake weights")
    parser.add_argument("--optimizer-gb", type=float, default=0.0, help="fake optimizer state to add to the file (GiB)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and the converted folder")
    parser.add_argument("--stage", choices=("write", "convert"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    checkpoint, out = args.workdir / "released_layout.ckpt", args.workdir / "converted"
    if args.stage == "write":
        print(json.dumps(write_checkpoint(args.manifest, checkpoint, args.dtype, args.optimizer_gb)))
        return
    if args.stage == "convert":
        print(json.dumps(convert(checkpoint, out)))
        return

    if args.manifest is None or not args.manifest.is_file():
        parser.error(f"--manifest: {MANIFEST_NAME} not found")
    if args.workdir.exists():
        parser.error(f"--workdir {args.workdir} exists; give a new folder")
    args.workdir.mkdir(parents=True)
    bytes_per = 2 if args.dtype != "float32" else 4
    need_gib = 2 * 2.45e9 * bytes_per / 2**30 + args.optimizer_gb + 1
    free_gib = shutil.disk_usage(args.workdir).free / 2**30
    if free_gib < need_gib:
        shutil.rmtree(args.workdir)
        parser.error(f"{free_gib:.1f} GiB free under {args.workdir}, about {need_gib:.1f} GiB needed")
    try:
        common = ["--manifest", str(args.manifest), "--workdir", str(args.workdir), "--dtype", args.dtype,
                  "--optimizer-gb", str(args.optimizer_gb)]
        written = _stage(*common, "--stage", "write")
        converted = _stage(*common, "--stage", "convert")
        print(json.dumps({"dtype": args.dtype, **written, **converted}, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
