"""Ablation sweeps: expand a sweep spec into runs and execute them with papermill.

A sweep spec (YAML, see `sweeps/demo.yaml`) names the benchmark, the
parameters shared by every run (the full method), the sampling seeds, and per
ablation its arms as parameter overrides of the full method. Each run is
identified by a short hash of its canonical parameters, so a run that several
ablations contain (the full method is in all of them) executes once.

Run folder `<sweep_dir>/runs/<run_id>/`: `params.yaml`, `executed.ipynb`,
`checkpoint/`, `metrics.jsonl`, `results.parquet`, `summary.csv`, `samples/`
and `DONE`, written last. A run with `DONE` is skipped; a run without it is
redone from a clean folder (training resumes from its checkpoint when one is
complete), so a sweep killed at any moment, even with `kill -9`, continues on
the next invocation without duplicated or half-written results.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DONE = "DONE"
FAILED = "FAILED"
LOCK_FILE = ".lock"  # `folder_lock`'s file in the locked folder
KEPT_ON_RETRY = ("checkpoint", LOCK_FILE)  # a redone run resumes training from its checkpoint
SPEC_KEYS = {"name", "description", "benchmark", "notebook", "parameters", "ablations", "timeout_s", "train_seeds"}
ABLATION_KEYS = {"description", "reference", "arms", "paper_table"}


@dataclass(frozen=True)
class Run:
    """One unique run: its parameters, id, and the (ablation, arm) pairs it serves."""

    run_id: str
    params: dict
    members: tuple[tuple[str, str], ...]

    @property
    def ablations(self) -> list[str]:
        return sorted({a for a, _ in self.members})


@dataclass
class SweepSpec:
    name: str
    benchmark: str
    notebook: str
    parameters: dict
    ablations: dict
    description: str = ""
    timeout_s: int = 3600
    train_seeds: list[int] | None = None  # each arm trained once per seed (parameter train_seed)
    path: Path | None = None

    @classmethod
    def load(cls, path: str | Path) -> "SweepSpec":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep spec {str(path)!r} does not exist")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"sweep spec {path}: expected a mapping at the top level, got {type(raw).__name__}")
        unknown = set(raw) - SPEC_KEYS
        if unknown:
            raise ValueError(f"sweep spec {path}: unknown keys {sorted(unknown)} (known: {sorted(SPEC_KEYS)})")
        for key in ("name", "benchmark", "parameters", "ablations"):
            if key not in raw:
                raise ValueError(f"sweep spec {path}: missing required key {key!r}")
        spec = cls(
            name=str(raw["name"]),
            benchmark=str(raw["benchmark"]),
            notebook=str(raw.get("notebook", "notebooks/train_evaluate.ipynb")),
            parameters=dict(raw["parameters"]),
            ablations=dict(raw["ablations"]),
            description=str(raw.get("description", "")),
            timeout_s=int(raw.get("timeout_s", 3600)),
            train_seeds=None if raw.get("train_seeds") is None else [int(x) for x in raw["train_seeds"]],
            path=path,
        )
        spec.validate()
        return spec

    def validate(self) -> None:
        if not self.ablations:
            raise ValueError(f"sweep {self.name!r} has no ablations")
        for name, ablation in self.ablations.items():
            if not isinstance(ablation, dict) or "arms" not in ablation:
                raise ValueError(f"ablation {name!r}: expected a mapping with 'arms'")
            unknown = set(ablation) - ABLATION_KEYS
            if unknown:
                raise ValueError(f"ablation {name!r}: unknown keys {sorted(unknown)} (known: {sorted(ABLATION_KEYS)})")
            arms = ablation["arms"]
            if not isinstance(arms, dict) or not arms:
                raise ValueError(f"ablation {name!r}: 'arms' must be a non-empty mapping of arm name -> overrides")
            reference = ablation.get("reference")
            if reference is not None and reference not in arms:
                raise ValueError(f"ablation {name!r}: reference arm {reference!r} is not one of {sorted(arms)}")
            for arm, overrides in arms.items():
                unknown_params = set(overrides or {}) - set(self.parameters)
                if unknown_params:
                    raise ValueError(
                        f"ablation {name!r}, arm {arm!r}: overrides {sorted(unknown_params)} are not "
                        f"parameters of the sweep (known: {sorted(self.parameters)})"
                    )

    def arm_params(self, ablation: str, arm: str, train_seed: int | None = None) -> dict:
        params = copy.deepcopy(self.parameters)
        params.update(copy.deepcopy(self.ablations[ablation]["arms"][arm] or {}))
        params["benchmark"] = self.benchmark
        if train_seed is not None:
            params["train_seed"] = train_seed
        if params.get("preset") == "tiny":
            # The embedded world's shipped models are an input of every tiny run: new ones, new run ids.
            from anydoor.world import manifest_sha256

            params["world_models"] = manifest_sha256()
        return params

    def arm_runs(self, ablation: str, arm: str) -> list[dict]:
        """The parameter sets of one arm: one per training seed."""
        seeds = self.train_seeds or [None]
        return [self.arm_params(ablation, arm, seed) for seed in seeds]

    def expand(self, only: str | None = None) -> list[Run]:
        """Unique runs, in spec order; identical parameter sets are shared."""
        if only is not None and only not in self.ablations:
            raise ValueError(f"--only {only!r} is not an ablation of {self.name!r}: {sorted(self.ablations)}")
        runs: dict[str, tuple[dict, list]] = {}
        for ablation, spec in self.ablations.items():
            if only is not None and ablation != only:
                continue
            for arm in spec["arms"]:
                for params in self.arm_runs(ablation, arm):
                    rid = run_id(params)
                    runs.setdefault(rid, (params, []))[1].append((ablation, arm))
        return [Run(rid, params, tuple(members)) for rid, (params, members) in runs.items()]


def find_project_root(start: str | Path | None = None) -> Path:
    """The folder holding this project's pyproject.toml (notebooks run from
    notebooks/ in JupyterLab and from the root under papermill)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "sweeps").is_dir():
            return folder
    return here


def canonical(params: dict) -> str:
    """Canonical JSON: sorted keys, floats as written by json, no whitespace."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def run_id(params: dict) -> str:
    """Short, stable id of a parameter set (same parameters, same id; any change, a new id)."""
    return hashlib.sha256(canonical(params).encode()).hexdigest()[:10]


@dataclass
class RunResult:
    run: Run
    status: str  # "done" | "skipped" | "failed" | "pending" (dry run: would execute)
    seconds: float = 0.0
    reason: str = ""


@dataclass
class SweepResult:
    sweep_dir: Path
    results: list[RunResult] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {"done": 0, "skipped": 0, "failed": 0, "pending": 0}
        for r in self.results:
            counts[r.status] += 1
        return counts

    def describe(self) -> str:
        lines = [f"sweep {self.sweep_dir}: " + ", ".join(f"{k} {v}" for k, v in self.counts().items())]
        for r in self.results:
            arms = ", ".join(f"{a}/{b}" for a, b in r.run.members)
            extra = f" ({r.seconds:.0f} s)" if r.status == "done" else ""
            reason = f": {r.reason}" if r.reason else ""
            lines.append(f"  {r.status:7s} {r.run.run_id} [{arms}]{extra}{reason}")
        return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_sweep_index(spec: SweepSpec, runs: list[Run], sweep_dir: Path) -> None:
    """`sweep.json`: the spec and which runs serve which (ablation, arm) (a
    list: one run per training seed); reports read it."""
    index = {
        "name": spec.name,
        "description": spec.description,
        "benchmark": spec.benchmark,
        "spec": str(spec.path) if spec.path else None,
        "parameters": spec.parameters,
        "ablations": {
            name: {
                "description": ab.get("description", ""),
                "reference": ab.get("reference"),
                "paper_table": ab.get("paper_table"),
                "arms": {arm: [run_id(p) for p in spec.arm_runs(name, arm)] for arm in ab["arms"]},
            }
            for name, ab in spec.ablations.items()
        },
        "runs": {r.run_id: {"params": r.params, "members": [list(m) for m in r.members]} for r in runs},
    }
    sweep_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(sweep_dir / "sweep.json", json.dumps(index, indent=2, sort_keys=True, default=str))


def prepare_run_folder(run: Run, run_dir: Path, sweep_name: str) -> None:
    """A run without DONE is redone from a clean folder, keeping only its
    training checkpoint (complete checkpoints resume; partial ones are
    ignored by the trainer)."""
    if run_dir.exists():
        for child in run_dir.iterdir():
            if child.name in KEPT_ON_RETRY:
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    params = dict(run.params, run_id=run.run_id, sweep=sweep_name, ablations=run.ablations)
    _write_atomic(run_dir / "params.yaml", yaml.safe_dump(params, sort_keys=True))


def notebook_parameters(run: Run, run_dir: Path, sweep_dir: Path, sweep_name: str) -> dict:
    return dict(
        run.params,
        run_dir=str(run_dir.resolve()),
        run_id=run.run_id,
        sweep_name=sweep_name,
        sweep_dir=str(sweep_dir.resolve()),
        tags=",".join(run.ablations),
    )


def _die_with_parent() -> None:
    """Child setup: on Linux, SIGKILL this process when the runner dies (even
    by kill -9), so no orphaned papermill keeps writing a run folder that the
    next invocation redoes; its kernel exits with it (ipykernel polls its parent)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@contextmanager
def folder_lock(folder: Path, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on ``folder/.lock`` (the folder is created) for
    the block; yield whether it is held. Blocking: wait for it (always True).
    Non-blocking: False at once when another live process holds it. The OS
    releases it when its holder dies, even by kill -9."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def execute_run(
    run: Run,
    sweep_dir: Path,
    notebook: Path,
    sweep_name: str,
    timeout_s: int,
    project_root: Path,
    threads: int | None = None,
) -> RunResult:
    """Execute one run with papermill in a child process that dies with the
    runner. DONE is written last, by the notebook's final cell, only after
    every other file is complete."""
    run_dir = sweep_dir / "runs" / run.run_id
    start = time.monotonic()
    # Another live runner (a second `anydoor sweep`, a W&B agent) on the same
    # folder: skip the run rather than wait.
    with folder_lock(run_dir, blocking=False) as locked:
        if not locked:
            return RunResult(run, "skipped", reason="running in another process")
        if (run_dir / DONE).exists():  # finished by another runner meanwhile
            return RunResult(run, "skipped", reason="already done")
        prepare_run_folder(run, run_dir, sweep_name)
        params_file = run_dir / ".papermill_parameters.yaml"
        _write_atomic(params_file, yaml.safe_dump(notebook_parameters(run, run_dir, sweep_dir, sweep_name)))
        cmd = [
            sys.executable, "-m", "papermill", str(notebook), str(run_dir / "executed.ipynb"),
            "-f", str(params_file), "--kernel", "python3", "--cwd", str(project_root),
            "--no-progress-bar", "--log-level", "WARNING",
        ]
        log_path = run_dir / "papermill.log"
        with open(log_path, "w") as log:
            env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
            if threads and "OMP_NUM_THREADS" not in os.environ:
                # parallel jobs share the cores: oversubscribed OpenMP threads spin
                env["OMP_NUM_THREADS"] = str(threads)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()  # its kernel exits with it
                proc.wait()
                return _failed(run, run_dir, start, f"timed out after {timeout_s} s")
        seconds = time.monotonic() - start
        if code != 0 or not (run_dir / DONE).exists():
            return _failed(run, run_dir, start, _last_error(log_path) or f"papermill exited with {code}")
        return RunResult(run, "done", seconds)


def _failed(run: Run, run_dir: Path, start: float, reason: str) -> RunResult:
    _write_atomic(run_dir / FAILED, reason + "\n")
    return RunResult(run, "failed", time.monotonic() - start, reason)


def _last_error(log_path: Path) -> str:
    lines = [l.strip() for l in log_path.read_text(errors="replace").splitlines() if l.strip()]
    for line in reversed(lines):
        if "Error" in line or "Exception" in line:
            return line[:300]
    return lines[-1][:300] if lines else ""


def run_sweep(
    spec_path: str | Path,
    sweep_dir: str | Path | None = None,
    jobs: int = 1,
    only: str | None = None,
    run_ids: list[str] | None = None,
    dry_run: bool = False,
    retry_failed: bool = False,
    timeout_s: int | None = None,
    project_root: str | Path | None = None,
    log=print,
) -> SweepResult:
    """Expand the spec, skip finished runs, execute the missing ones.

    A run that failed before (FAILED marker) is retried only with
    `retry_failed`; one failed run never stops the others.
    """
    spec = SweepSpec.load(spec_path)
    project_root = Path(project_root or Path.cwd())
    sweep_dir = Path(sweep_dir or project_root / "outputs" / "sweeps" / spec.name)
    notebook = (project_root / spec.notebook).resolve()
    if not notebook.is_file():
        raise FileNotFoundError(f"sweep notebook {str(notebook)!r} does not exist")
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    runs = spec.expand(only=only)
    if run_ids is not None:
        unknown = sorted(set(run_ids) - {r.run_id for r in runs})
        if unknown:
            raise ValueError(f"run ids {unknown} are not runs of {spec.name!r}; `--dry-run` lists them")
        runs = [r for r in runs if r.run_id in set(run_ids)]
    result = SweepResult(sweep_dir)
    if not dry_run:
        write_sweep_index(spec, spec.expand(), sweep_dir)

    todo: list[Run] = []
    for run in runs:
        run_dir = sweep_dir / "runs" / run.run_id
        if (run_dir / DONE).exists():
            result.results.append(RunResult(run, "skipped", reason="already done"))
        elif (run_dir / FAILED).exists() and not retry_failed:
            reason = (run_dir / FAILED).read_text().strip()
            result.results.append(RunResult(run, "failed", reason=f"failed before ({reason}); use --retry-failed"))
        else:
            todo.append(run)
    if dry_run:
        for run in todo:
            result.results.append(RunResult(run, "pending", reason="dry run: would execute"))
        return result

    timeout = timeout_s or spec.timeout_s

    def one(run: Run) -> RunResult:
        arms = ", ".join(f"{a}/{b}" for a, b in run.members)
        log(f"[sweep] start {run.run_id} [{arms}]")
        threads = max(1, (os.cpu_count() or 1) // jobs)
        r = execute_run(run, sweep_dir, notebook, spec.name, timeout, project_root, threads)
        log(f"[sweep] {r.status} {run.run_id} in {r.seconds:.0f} s" + (f": {r.reason}" if r.reason else ""))
        return r

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        result.results.extend(pool.map(one, todo))
    return result


def wandb_sweep_config(spec_path: str | Path, sweep_dir: str | Path) -> dict:
    """A W&B sweep (grid over run ids) whose agents execute runs through this
    runner: `wandb agent` calls `anydoor sweep SPEC --run-id=<id>` per run.
    The sweep folder must be shared by the machines (runs are skipped once
    DONE, and a trained model is shared through file locks)."""
    spec = SweepSpec.load(spec_path)
    ids = [r.run_id for r in spec.expand()]
    return {
        "name": spec.name,
        "method": "grid",
        "program": "anydoor",
        "command": ["${program}", "sweep", str(spec_path), "--sweep-dir", str(sweep_dir), "${args}"],
        "parameters": {"run-id": {"values": ids}},
    }
