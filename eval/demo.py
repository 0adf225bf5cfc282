"""The main job (`make demo`): every ablation on the embedded default, then the report.

Steps, each reused when already done (a rerun takes seconds):
1. the synthetic data set (`anydoor synth-data`), deterministic for its seed;
2. a check of the embedded world's shipped models (`anydoor.world`: the VAE
   and the caption-conditioned base UNet every arm starts from, the ID and
   metric backbones), hash by hash: nothing is pretrained here;
3. the sweep `sweeps/demo.yaml` (papermill per run, resumable);
4. the four ablation notebooks, executed into the sweep folder;
5. the report (`reports/<sweep>/index.html` and `report.md`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ABLATION_NOTEBOOKS = {
    "id_extractor": "01_id_extractor.ipynb",
    "detail_map": "02_detail_map.ipynb",
    "timestep_sampling": "03_timestep_sampling.ipynb",
    "components": "04_components.ipynb",
}
# 48 benchmark pairs (issue 27: more pairs, smaller MDEs; the first 16 are the earlier benchmark's, the
# training splits do not depend on the count). About 10 s to write.
SYNTH_SETTINGS = dict(videos=240, frames=6, size=96, benchmark_pairs=48, seed=0)
SETTINGS_FILE = "demo_settings.json"  # the SYNTH_SETTINGS a folder was written with


def _log(message: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_synthetic_data(folder: Path) -> Path:
    """The demo's synthetic data set in `folder`: reused when written with today's `SYNTH_SETTINGS`,
    rewritten (deterministically, into a new folder swapped in when complete) when they changed."""
    from anydoor.data.synthetic import write_synthetic_dataset

    settings_file = folder / SETTINGS_FILE
    if (folder / "manifest.json").is_file():
        if settings_file.is_file() and json.loads(settings_file.read_text()) == SYNTH_SETTINGS:
            _log(f"synthetic data: reusing {folder}")
            return folder
        _log(f"synthetic data: {folder} was written with other settings; rewriting it with {SYNTH_SETTINGS}")
    elif folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists but holds no complete synthetic data set (no manifest.json): remove it")
    else:
        _log(f"synthetic data: writing {folder}")
    tmp = folder.with_name(folder.name + ".writing")
    shutil.rmtree(tmp, ignore_errors=True)
    print(write_synthetic_dataset(tmp, **SYNTH_SETTINGS).describe())
    (tmp / SETTINGS_FILE).write_text(json.dumps(SYNTH_SETTINGS, sort_keys=True) + "\n")
    old = folder.with_name(folder.name + ".old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _is_current(out: Path, inputs: list[Path]) -> bool:
    """True when `out` exists and is newer than every existing input."""
    if not out.is_file():
        return False
    newest = max((p.stat().st_mtime for p in inputs if p.exists()), default=0.0)
    return out.stat().st_mtime >= newest


def execute_ablation_notebooks(spec: Path, sweep_dir: Path, root: Path) -> list[Path]:
    """Execute each ablation notebook (its arms are already done) into the sweep
    folder; one already executed after the spec, the notebook and every run's
    DONE marker is kept (a rerun of the demo takes seconds)."""
    out_dir = sweep_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    done_markers = sorted(sweep_dir.glob("runs/*/DONE"))
    written = []
    for ablation, name in ABLATION_NOTEBOOKS.items():
        out = out_dir / name
        if _is_current(out, [spec, root / "notebooks" / name, *done_markers]):
            _log(f"notebook {name}: reusing {out}")
            written.append(out)
            continue
        cmd = [
            sys.executable, "-m", "papermill", str(root / "notebooks" / name), str(out),
            "-p", "sweep_spec", str(spec), "-p", "sweep_dir", str(sweep_dir), "-p", "ablation", ablation,
            "--kernel", "python3", "--cwd", str(root), "--no-progress-bar", "--log-level", "WARNING",
        ]
        code = subprocess.call(cmd)
        if code != 0:
            _log(f"notebook {name} failed (exit {code}); see {out}")
            if out.is_file():
                os.utime(out, (0, 0))  # kept for reading, but stale: the next demo executes it again
        written.append(out)
    return written


def run_demo(jobs: int = 1, root: str | Path | None = None) -> Path:
    from anydoor import world
    from eval.report import render_report, summary_text
    from eval.sweeps import SweepSpec, find_project_root, run_sweep

    root = Path(root or find_project_root())
    start = time.monotonic()
    spec_path = root / "sweeps" / "demo.yaml"
    spec = SweepSpec.load(spec_path)
    ensure_synthetic_data(root / "data" / "synthetic")
    for folder in (world.ANYDOOR_WORLD_DIR, world.BASE_UNET_DIR, world.CLIP_DIR, world.METRIC_CLIP_DIR,
                   world.METRIC_DINO_DIR):
        world.verified_folder(folder)
    _log(f"world models: shipped, hash-checked (manifest {world.manifest_sha256()[:12]})")
    sweep_dir = root / "outputs" / "sweeps" / spec.name
    _log(f"sweep {spec_path.name}: {len(spec.expand())} unique runs into {sweep_dir}")
    result = run_sweep(spec_path, sweep_dir, jobs=jobs, project_root=root, log=_log)
    print(result.describe(), flush=True)
    _log("ablation notebooks")
    execute_ablation_notebooks(spec_path, sweep_dir, root)
    index = render_report(sweep_dir, root / "reports" / spec.name)
    _log(f"done in {time.monotonic() - start:.0f} s")
    print(summary_text(sweep_dir))
    print(f"\nReport: {index}")
    if result.counts()["failed"]:
        raise RuntimeError(f"{result.counts()['failed']} run(s) failed; the report shows the others. Rerun `make demo` "
                           "after fixing, or `anydoor sweep sweeps/demo.yaml --retry-failed`.")
    return index
