"""Training checkpoints: atomic folders, the latest complete one, pruning;
folders built once per cache key.

Layout of a run's output folder::

    output_dir/
        config.yaml
        metrics.jsonl
        checkpoints/step-000100/   a checkpoint (pipeline/ + state/ + COMPLETE)
        pipeline/                  the final pipeline (AnyDoorPipeline.from_pretrained)

A folder is written as ``<name>.tmp-<pid>`` and renamed into place after its
``COMPLETE`` marker, written last. A crash mid-write leaves only a ``.tmp-``
folder, which is never taken for a checkpoint; rename is atomic on one file
system, so a folder named ``step-NNNNNN`` is always whole.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from os import PathLike
from pathlib import Path

CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
_STEP_RE = re.compile(r"^step-(\d{6,})$")
_TMP_TAG = ".tmp-"


def checkpoint_path(output_dir: str | PathLike, step: int) -> Path:
    """``output_dir/checkpoints/step-NNNNNN`` (zero-padded so names sort by step)."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an int >= 0, got {step!r}")
    return Path(output_dir) / CHECKPOINTS_DIR / f"step-{step:06d}"


def is_complete(folder: str | PathLike) -> bool:
    """True when `folder` was renamed into place with its completion marker."""
    folder = Path(folder)
    return _TMP_TAG not in folder.name and (folder / COMPLETE_MARKER).is_file()


@contextmanager
def atomic_folder(path: str | PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write into; on success, mark it
    complete and rename it to `path` (replacing an existing folder).

    On an exception the temporary folder is removed and the error re-raised;
    `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}{_TMP_TAG}{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        (tmp / COMPLETE_MARKER).write_text("complete\n")
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        # rename() cannot replace a non-empty folder: move the old one aside
        # first; a reader sees either folder whole, never a mix.
        old = path.with_name(f"{path.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old)
    else:
        os.rename(tmp, path)
    _fsync_dir(path.parent)


def cached_folder(
    folder: str | PathLike, key: str, meta_file: str, build: Callable[[Path], dict], reuse: bool = True
) -> dict:
    """A folder built once per cache key: its metadata, read or freshly written.

    When ``folder/meta_file`` records ``"cache_key": key`` (and `reuse`), the
    folder is kept as it is. Otherwise ``build(tmp)`` writes the contents into
    a temporary folder and returns their metadata; the metadata, with
    ``cache_key`` first, is written to ``meta_file`` and the folder renamed into
    place (`atomic_folder`), so a crash leaves the old folder or none, never a
    half-written one whose key matches.
    """
    folder = Path(folder)
    meta_path = folder / meta_file
    if reuse and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("cache_key") == key:
            return meta
    with atomic_folder(folder) as tmp:
        meta = {"cache_key": key, **build(tmp)}
        (tmp / meta_file).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries so the rename survives a power loss (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(output_dir: str | PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        match = _STEP_RE.match(folder.name)
        if match and folder.is_dir() and is_complete(folder):
            found.append((int(match.group(1)), folder))
    return sorted(found)


def latest_checkpoint(output_dir: str | PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | PathLike, output_dir: str | PathLike) -> Path:
    """The checkpoint folder a ``resume`` argument names.

    ``resume`` may be a checkpoint folder itself or a run's output folder
    (its latest complete checkpoint is used).
    """
    folder = Path(resume)
    if _STEP_RE.match(folder.name) and folder.is_dir():
        if not is_complete(folder):
            raise ValueError(f"resume folder {str(folder)!r} is not a complete checkpoint (no {COMPLETE_MARKER} marker)")
        return folder
    latest = latest_checkpoint(folder)
    if latest is None:
        raise ValueError(
            f"resume folder {str(folder)!r} holds no complete checkpoint "
            f"(expected {CHECKPOINTS_DIR}/step-NNNNNN/{COMPLETE_MARKER}); output_dir is {str(output_dir)!r}"
        )
    return latest


def prune_checkpoints(output_dir: str | PathLike, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints; return the deleted ones."""
    if keep is None:
        return []
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise ValueError(f"keep must be an int >= 1 or None, got {keep!r}")
    doomed = [folder for _, folder in list_checkpoints(output_dir)[:-keep]]
    for folder in doomed:
        # Unmark first: a crash mid-delete must not leave a half folder that
        # still looks complete.
        (folder / COMPLETE_MARKER).unlink()
        shutil.rmtree(folder)
    return doomed


def remove_stale_temporaries(output_dir: str | PathLike) -> list[Path]:
    """Remove ``.tmp-<pid>`` folders left by crashed writes in a run's folder."""
    output_dir = Path(output_dir)
    stale = []
    for root in (output_dir, output_dir / CHECKPOINTS_DIR):
        if root.is_dir():
            stale += [p for p in root.iterdir() if p.is_dir() and _TMP_TAG in p.name]
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
    return stale
