"""Run files on disk (docs/design.md, "Run identity and results"): atomic writes, the files
of one run, and the locks.

Layout: ``<output_dir>/<sweep>/<run>/`` with ``config.yaml``, ``metrics.json`` (a
:class:`~loraexp.results.record.RunRecord`), ``history.jsonl`` and ``adapter/``; the sweep summary
is :mod:`loraexp.results.summary`'s. Every file except the append-only history is written atomically
(temp file + rename). Concurrency: a run is trained while holding ``<run>/.lock`` (so two
processes never train it at once) and the summary is rewritten while holding
``<sweep>/.summary.lock``; both are ``filelock`` locks (``flock`` on Linux), released by the
OS when a process is killed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from filelock import FileLock, Timeout

from loraexp.results.record import STATUS_COMPLETED, RunRecord

RUN_LOCK = ".lock"
SPACE_RESERVE = ".space_reserve"
# Held by a running run and given up when the disk fills, so its failure can still be recorded:
# room for metrics.json written atomically (the old and the new file side by side).
SPACE_RESERVE_BYTES = 4 << 20
LOW_SPACE_BYTES = 1 << 20


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory (fsynced) and
    ``os.replace``, so readers see either the old or the new file, never a partial one; a
    failed write removes the temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode())


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk: an ``OSError`` with
    ``errno`` ENOSPC or EDQUOT, or a library error that only carries the OS message ("No space
    left on device"; safetensors and ``torch.save`` re-raise it as their own error)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free for this user on the file system holding ``path`` (its nearest existing
    parent), or None if it cannot be read."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def remove_temp_files(directory: str | os.PathLike) -> None:
    """Remove the temp files of :func:`atomic_write_text` left in ``directory`` by a write
    that failed (a full disk) or was killed."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value) if isinstance(value, (set, frozenset)) else list(value)
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class RunStore:
    """Files of one run under ``run_dir``.

    With ``writable=False`` (a non-main process of a multi-process run) every ``write_*``,
    ``start_history`` and ``append_history`` does nothing, so results are written once.
    """

    def __init__(self, run_dir: str | os.PathLike, writable: bool = True):
        self.run_dir = Path(run_dir)
        self.writable = writable
        self.config_path = self.run_dir / "config.yaml"
        self.metrics_path = self.run_dir / "metrics.json"
        self.history_path = self.run_dir / "history.jsonl"
        self.adapter_dir = self.run_dir / "adapter"

    def read_metrics(self) -> dict[str, Any] | None:
        """The run's ``metrics.json``, or None if absent or unreadable."""
        try:
            return json.loads(self.metrics_path.read_text())
        except (OSError, ValueError):
            return None

    def read_record(self) -> RunRecord | None:
        """The run's ``metrics.json`` as a :class:`~loraexp.results.record.RunRecord`, or None if
        absent or unreadable."""
        data = self.read_metrics()
        try:
            return RunRecord.from_dict(data) if isinstance(data, dict) and data else None
        except (KeyError, TypeError, AttributeError, ValueError):
            return None

    def read_config(self) -> dict[str, Any] | None:
        """The run's saved ``config.yaml``, or None if absent or unreadable."""
        try:
            return yaml.safe_load(self.config_path.read_text())
        except (OSError, yaml.YAMLError):
            return None

    @contextlib.contextmanager
    def lock(self) -> Iterator[bool]:
        """Hold the run's lock (``<run_dir>/.lock``) for the ``with`` block. Yields True when
        acquired, False (holding nothing) when another process holds it; never waits."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.run_dir / RUN_LOCK)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()

    def reserve_space(self, nbytes: int = SPACE_RESERVE_BYTES) -> None:
        """Hold ``nbytes`` bytes of disk in ``<run_dir>/.space_reserve`` (zeros, written so the
        file system allocates them) for :meth:`release_space` to give back when the disk is
        full. Best effort: on a disk already too full, nothing is held."""
        if not self.writable:
            return
        path = self.run_dir / SPACE_RESERVE
        try:
            with open(path, "wb") as fh:
                try:
                    os.posix_fallocate(fh.fileno(), 0, nbytes)  # allocated even where zeros compress
                except (AttributeError, OSError) as exc:
                    if is_disk_full(exc):
                        raise
                    fh.write(bytes(nbytes))
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError:
            path.unlink(missing_ok=True)

    def low_on_space(self) -> bool:
        """Whether the file system of the run has less than :data:`LOW_SPACE_BYTES` free: what
        a failure whose message hides ENOSPC (``torch.save`` raises a bare ``RuntimeError``)
        most likely was."""
        free = free_bytes(self.run_dir)
        return free is not None and free < LOW_SPACE_BYTES

    def release_space(self) -> None:
        """Give back the disk held by :meth:`reserve_space`."""
        (self.run_dir / SPACE_RESERVE).unlink(missing_ok=True)

    def is_completed(self) -> bool:
        """True when ``metrics.json`` says ``completed``."""
        return (self.read_metrics() or {}).get("status") == STATUS_COMPLETED

    def write_config(self, config: dict[str, Any]) -> None:
        """Atomically write the resolved config as ``config.yaml``."""
        if not self.writable:
            return
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def write_record(self, record: RunRecord) -> None:
        """Atomically write ``metrics.json`` from ``record`` (sets become sorted lists,
        tensors numbers)."""
        if not self.writable:
            return
        atomic_write_text(self.metrics_path, json.dumps(record.to_dict(), indent=2, default=_json_default) + "\n")

    def start_history(self, keep_until_step: int | None = None) -> None:
        """Start ``history.jsonl`` for a new attempt of the run: truncated, or -- when resuming
        from the checkpoint at optimizer step ``keep_until_step`` -- keeping the records up to
        and including that step, so the curve continues where the checkpoint left it."""
        if not self.writable:
            return
        kept = []
        if keep_until_step is not None and self.history_path.is_file():
            for line in self.history_path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a kill
                    continue
                if record.get("step", 0) <= keep_until_step:
                    kept.append(line + "\n")
        atomic_write_text(self.history_path, "".join(kept))

    def read_history(self) -> list[dict[str, Any]]:
        """The rows of ``history.jsonl`` (none when it is missing); a line cut short by a kill
        is skipped."""
        rows = []
        if self.history_path.is_file():
            for line in self.history_path.read_text().splitlines():
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    continue
        return rows

    def last_logged_step(self, key: str = "train/loss") -> int:
        """The last optimizer step whose ``history.jsonl`` row has ``key`` (0: none yet), e.g.
        how far a running run has trained."""
        return max((row.get("step", 0) for row in self.read_history() if key in row), default=0)

    def write_jsonl(self, name: str, records: list[dict[str, Any]]) -> None:
        """Atomically write ``records`` as JSON lines to ``<run_dir>/<name>``."""
        if not self.writable:
            return
        atomic_write_text(self.run_dir / name, "".join(json.dumps(r, default=_json_default) + "\n" for r in records))

    def append_history(self, record: dict[str, Any]) -> None:
        """Append one JSON line (e.g. ``{"step": 10, "train/loss": 0.6}``)."""
        if not self.writable:
            return
        with open(self.history_path, "a") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
