"""Sweep runner and notebooks: expansion, run ids, shared runs, resume after kill -9, W&B offline runs.

The notebooks run for real under papermill with tiny parameters (a few
training steps, one benchmark pair, two sampler steps).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from eval.sweeps import DONE, SweepSpec, folder_lock, run_id, run_sweep

ROOT = Path(__file__).resolve().parents[1]


def write_spec(path: Path, data_root: Path, train_config: Path, **extra_params) -> Path:
    spec = {
        "name": "tiny",
        "benchmark": str(data_root / "benchmark"),
        "notebook": "notebooks/train_evaluate.ipynb",
        "timeout_s": 600,
        "parameters": {
            "train_config": str(train_config),
            "vae": "",
            "base_unet": "",
            "id_extractor": "dinov2",
            "detail_map": "hf",
            "timestep_sampler": "ats",
            "max_steps": 2,
            "batch_size": 2,
            "seeds": [0],
            "num_inference_steps": 2,
            "guidance_scale": 5.0,
            "random_backbones": True,
            **extra_params,
        },
        "ablations": {
            "detail_map": {"reference": "hf", "arms": {"none": {"detail_map": "none"}, "hf": {}}},
            "timestep_sampling": {"reference": "ats", "arms": {"uniform": {"timestep_sampler": "uniform"}, "ats": {}}},
        },
    }
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    from anydoor.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("sweep")
    data = root / "data"
    write_synthetic_dataset(data, videos=2, frames=3, size=64, benchmark_pairs=1, seed=0)
    config = yaml.safe_load((ROOT / "configs" / "train_tiny.yaml").read_text())
    config["data"][0]["path"] = str(data / "videos")
    config["data"][1]["path"] = str(data / "images")
    config.update(checkpoint_every=1, sample_every=0, log_every=1)
    train_config = root / "train.yaml"
    train_config.write_text(yaml.safe_dump(config))
    return root, data, train_config


def test_expansion_shares_identical_runs(tiny_project, tmp_path):
    root, data, train_config = tiny_project
    spec = SweepSpec.load(write_spec(tmp_path / "spec.yaml", data, train_config))
    runs = spec.expand()
    assert len(runs) == 3  # hf == ats: the full method is one run in both ablations
    shared = [r for r in runs if len(r.members) == 2]
    assert len(shared) == 1 and set(shared[0].members) == {("detail_map", "hf"), ("timestep_sampling", "ats")}
    only = spec.expand(only="detail_map")
    assert len(only) == 2 and shared[0].run_id in {r.run_id for r in only}


def test_tiny_runs_carry_the_world_models_hash(tiny_project, tmp_path, monkeypatch):
    """New world models (another manifest) give new run ids; runs of other presets do not carry it."""
    from anydoor import world

    root, data, train_config = tiny_project
    spec = SweepSpec.load(write_spec(tmp_path / "spec.yaml", data, train_config, preset="tiny"))
    runs = spec.expand()
    assert {r.params["world_models"] for r in runs} == {world.manifest_sha256()}
    monkeypatch.setattr(world, "manifest_sha256", lambda root=None: "f" * 64)
    assert {r.run_id for r in spec.expand()}.isdisjoint({r.run_id for r in runs})
    base = SweepSpec.load(write_spec(tmp_path / "base.yaml", data, train_config, preset="base"))
    assert all("world_models" not in r.params for r in base.expand())


def test_run_ids_are_stable_and_change_with_any_parameter():
    params = {"a": 1, "b": [0, 1], "c": "x"}
    assert run_id(params) == run_id(dict(reversed(list(params.items()))))
    assert run_id(params) != run_id({**params, "a": 2})
    assert run_id(params) != run_id({**params, "b": [1, 0]})
    assert len(run_id(params)) == 10


def test_folder_lock_waits_or_reports_a_held_lock(tmp_path):
    """flock locks of two open files conflict even within one process: a
    non-blocking try reports the held lock, a blocking one waits for it."""
    folder = tmp_path / "run" / "nested"
    acquired = threading.Event()

    def wait_for_lock():
        with folder_lock(folder) as held:
            assert held
            acquired.set()

    with folder_lock(folder) as held:
        assert held and (folder / ".lock").is_file()
        with folder_lock(folder, blocking=False) as second:
            assert second is False
        waiter = threading.Thread(target=wait_for_lock)
        waiter.start()
        assert not acquired.wait(0.2)  # still held here
    assert acquired.wait(10)
    waiter.join()
    with folder_lock(folder, blocking=False) as again:
        assert again is True


def test_bad_specs_give_clear_errors(tmp_path):
    base = {"name": "x", "benchmark": "b", "parameters": {"p": 1}, "ablations": {"a": {"arms": {"one": {}}}}}
    cases = [
        ({**base, "extra": 1}, "unknown keys"),
        ({k: v for k, v in base.items() if k != "parameters"}, "missing required key 'parameters'"),
        ({**base, "ablations": {"a": {"arms": {"one": {"q": 2}}}}}, "not parameters of the sweep"),
        ({**base, "ablations": {"a": {"reference": "two", "arms": {"one": {}}}}}, "reference arm 'two'"),
    ]
    for i, (spec, message) in enumerate(cases):
        path = tmp_path / f"spec{i}.yaml"
        path.write_text(yaml.safe_dump(spec))
        with pytest.raises(ValueError, match=message):
            SweepSpec.load(path)
    with pytest.raises(FileNotFoundError):
        SweepSpec.load(tmp_path / "nowhere.yaml")


def _runner(spec: Path, sweep_dir: Path) -> list[str]:
    return [sys.executable, "-m", "anydoor.cli", "sweep", str(spec), "--sweep-dir", str(sweep_dir)]


@pytest.mark.slow
def test_sweep_runs_once_resumes_after_kill_and_logs_wandb_offline(tiny_project, tmp_path):
    root, data, train_config = tiny_project
    spec = write_spec(tmp_path / "spec.yaml", data, train_config)
    sweep_dir = tmp_path / "sweep"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

    # Start the sweep and kill -9 the whole process group in the middle of a run.
    proc = subprocess.Popen(_runner(spec, sweep_dir), cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(sweep_dir.glob("runs/*/executed.ipynb")):
        time.sleep(0.5)
    time.sleep(3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    runs = SweepSpec.load(spec).expand()
    assert not all((sweep_dir / "runs" / r.run_id / DONE).exists() for r in runs)

    # The next invocation finishes every run; nothing half-written counts as done.
    result = run_sweep(spec, sweep_dir, project_root=ROOT, log=lambda m: None)
    assert result.counts()["failed"] == 0, result.describe()
    for r in runs:
        run_dir = sweep_dir / "runs" / r.run_id
        assert (run_dir / DONE).exists()
        for name in ("params.yaml", "executed.ipynb", "results.parquet", "summary.csv"):
            assert (run_dir / name).is_file(), name
        assert (run_dir / "checkpoint" / "pipeline" / "model_index.json").is_file()
        assert list((run_dir / "samples").glob("*.png"))
        assert yaml.safe_load((run_dir / "params.yaml").read_text())["run_id"] == r.run_id

    # W&B: one offline run folder per run id, holding the config and metrics.
    wandb_runs = {r.run_id: sorted((sweep_dir / "runs" / r.run_id).glob("wandb/offline-run-*")) for r in runs}
    for rid, folders in wandb_runs.items():
        assert len(folders) == 1, (rid, folders)
        assert folders[0].name.endswith(rid)
        record = (folders[0] / f"run-{rid}.wandb").read_bytes()  # the offline run's protobuf log
        for logged in (b"detail_map", b"timestep_sampler", b"train/loss", b"eval/psnr_mask", b"eval/samples"):
            assert logged in record, logged

    # A rerun skips every finished run: no new W&B run for the same id.
    again = run_sweep(spec, sweep_dir, project_root=ROOT, log=lambda m: None)
    assert again.counts() == {"done": 0, "skipped": 3, "failed": 0, "pending": 0}
    assert {r.run_id: sorted((sweep_dir / "runs" / r.run_id).glob("wandb/offline-run-*")) for r in runs} == wandb_runs

    # Each ablation notebook reads the finished runs (the tiny spec's ablations
    # stand in for the demo's: the notebooks differ only in their defaults).
    notebooks = ["01_id_extractor", "02_detail_map", "03_timestep_sampling", "04_components"]
    for name, ablation in zip(notebooks, ["detail_map", "detail_map", "timestep_sampling", "timestep_sampling"]):
        subprocess.run(
            [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / f"{name}.ipynb"), str(tmp_path / f"{name}.ipynb"),
             "-p", "sweep_spec", str(spec), "-p", "sweep_dir", str(sweep_dir), "-p", "ablation", ablation,
             "-p", "run_missing", "False", "--kernel", "python3", "--cwd", str(ROOT), "--no-progress-bar"],
            check=True, env=env, capture_output=True,
        )
    assert (sweep_dir / "baselines" / "results.parquet").is_file()
    assert list((sweep_dir / "ablations").glob("*/wandb/offline-run-*"))  # job_type="ablation" runs


@pytest.mark.slow
def test_quickstart_notebook_runs(tiny_project, tmp_path):
    root, data, _ = tiny_project
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    subprocess.run(
        [sys.executable, "-m", "papermill", str(ROOT / "notebooks" / "00_quickstart.ipynb"), str(tmp_path / "q.ipynb"),
         "-p", "benchmark", str(data / "benchmark"), "-p", "num_inference_steps", "2", "-p", "fast_steps", "2",
         "--kernel", "python3", "--cwd", str(ROOT), "--no-progress-bar"],
        check=True, env=env, capture_output=True,
    )


def test_wandb_sweep_config_lists_every_run(tiny_project, tmp_path):
    from eval.sweeps import wandb_sweep_config

    root, data, train_config = tiny_project
    spec = write_spec(tmp_path / "spec.yaml", data, train_config)
    config = wandb_sweep_config(spec, tmp_path / "sweep")
    assert config["method"] == "grid"
    assert sorted(config["parameters"]["run-id"]["values"]) == sorted(r.run_id for r in SweepSpec.load(spec).expand())


def _notebook_params(**changes) -> dict:
    """A run's parameters as `train_evaluate.ipynb` collects them (every ARM_PARAMETER_NAMES entry)."""
    from eval.arm import ARM_PARAMETER_NAMES, collect_params

    namespace = {name: "" for name in ARM_PARAMETER_NAMES}
    namespace.update(
        run_dir="runs/aaaa", run_id="aaaa", sweep_name="demo", sweep_dir="outputs/sweeps/demo", tags=["detail_map"],
        train_config="configs/train_tiny.yaml", preset="tiny", id_extractor="dinov2", remove_background=True,
        detail_map="hf", timestep_sampler="ats", conditioning_dropout=0.0, max_steps=0, batch_size=2,
        learning_rate=1e-3, train_seed=0, seeds=[0, 1], num_inference_steps=50, guidance_scale=5.0,
        shape_control=False, random_backbones=True, eval_batch_size=8, wandb_project="anydoor",
    )
    namespace.update(changes)
    return collect_params(namespace)


def test_runs_differing_in_evaluation_or_identity_share_one_trained_model():
    from eval.arm import trained_model_key

    full = _notebook_params()
    # The demo's full method at guidance 1.0: another run id, folder and tags, the same training.
    guidance_1 = _notebook_params(run_dir="runs/bbbb", run_id="bbbb", tags=["reference_rows"], guidance_scale=1.0,
                                  seeds=[0], num_inference_steps=10, shape_control=True, wandb_project="other")
    assert trained_model_key(full) == trained_model_key(guidance_1)
    for change in (dict(max_steps=10), dict(detail_map="rgb"), dict(train_seed=1), dict(train_config="other.yaml"),
                   dict(conditioning_dropout=0.1), dict(learning_rate=2e-3), dict(world_models="0" * 64),
                   dict(id_backbone="random")):
        assert trained_model_key(_notebook_params(**change)) != trained_model_key(full), change


def test_train_arm_trains_a_shared_model_once(tiny_project, tmp_path):
    from eval.arm import train_arm

    _, _, train_config = tiny_project
    sweep_dir = tmp_path / "sweep"
    folders = []
    for rid, guidance in (("aaaa", 5.0), ("bbbb", 1.0)):
        run_dir = sweep_dir / "runs" / rid
        run_dir.mkdir(parents=True)
        params = _notebook_params(run_dir=str(run_dir), run_id=rid, sweep_dir=str(sweep_dir),
                                  train_config=str(train_config), guidance_scale=guidance)
        folders.append(train_arm(params, run_dir, sweep_dir))
        if rid == "aaaa":
            first_written = (folders[0] / "model_index.json").stat().st_mtime_ns
    assert folders[0] == folders[1]
    assert (folders[0] / "model_index.json").stat().st_mtime_ns == first_written  # not trained again
    assert len(list((sweep_dir / "trained").iterdir())) == 1
    links = {(sweep_dir / "runs" / rid / "checkpoint").resolve() for rid in ("aaaa", "bbbb")}
    assert links == {folders[0].parent.resolve()}
