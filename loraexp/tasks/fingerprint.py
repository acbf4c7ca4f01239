"""A fingerprint of the data files a run reads: part of what decides its result
(docs/reliability.md, "Identity covers what determines the result").

Stored in each run's ``metrics.json`` (``resolved.data_fingerprint``); a rerun whose data files
changed since a run was trained refuses to reuse it (:mod:`loraexp.run.run_state`). Each file is
hashed once per process and re-hashed only when its size or modification time changes, so a
sweep pays for it once.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

HASH_CHUNK_BYTES = 1 << 20
_file_hashes: dict[tuple[str, int, int], str] = {}


def data_files(task_name: str, data_dir: str | Path) -> list[Path]:
    """The distinct local files every form of task ``task_name`` reads under ``data_dir``
    (both splits), sorted."""
    from loraexp.tasks import FORMS

    relative = {rel for form in FORMS[task_name].values() for rel in form.local_files.values()}
    return sorted(Path(data_dir) / rel for rel in relative)


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of ``path``'s bytes, cached by (path, size, mtime in ns).

    Raises:
        OSError: the file cannot be read.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _file_hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(HASH_CHUNK_BYTES):
                digest.update(chunk)
        _file_hashes[key] = digest.hexdigest()
    return _file_hashes[key]


def data_fingerprint(task_name: str, data_dir: str | Path | None) -> str:
    """``sha256:<16 hex>`` over the names and contents of the task's local files; for the Hub
    (``data_dir`` None), ``hub:<task>`` (the Hub dataset's revision is not pinned).

    Raises:
        OSError: a data file cannot be read.
    """
    if data_dir is None:
        return f"hub:{task_name}"
    digest = hashlib.sha256()
    for path in data_files(task_name, data_dir):
        digest.update(f"{path.relative_to(data_dir)}\0{file_sha256(path)}\n".encode())
    return "sha256:" + digest.hexdigest()[:16]
