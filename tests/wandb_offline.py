"""Read an offline W&B run back: the records of its ``run-<id>.wandb`` transaction log, each
parsed with wandb's own protobuf schema (``wandb.proto.wandb_internal_pb2.Record``).

wandb 0.31 ships no Python reader for the log (its ``sdk.internal.datastore`` was removed; a
``LocalApi`` is proposed in wandb/wandb#12745), so this reads the framing the log is written
in: a 7-byte ``:W&B`` header, then LevelDB log records in 32 KiB blocks (4-byte checksum,
2-byte little-endian length, 1-byte type: 1 full, 2 first, 3 middle, 4 last)."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def records(path: str | Path) -> Iterator:
    """Every ``Record`` of the transaction log at ``path``."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a header is padding
            pos += left
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            blob = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        else:
            blob, pending = pending + chunk, b""
        record = wandb_internal_pb2.Record()
        record.ParseFromString(blob)
        yield record


def history(path: str | Path) -> list[dict]:
    """The history rows of the log, nested keys joined with ``/`` and values JSON-decoded."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def defined_metrics(path: str | Path) -> list[tuple[str, str]]:
    """``(name or glob, step_metric)`` of every ``define_metric`` record."""
    out = []
    for record in records(path):
        if record.WhichOneof("record_type") == "metric":
            out.append((record.metric.name or record.metric.glob_name, record.metric.step_metric))
    return out


def offline_run_log(directory: str | Path) -> Path:
    """The ``run-*.wandb`` file of the only offline run under ``directory/wandb``, complete.

    wandb-core writes the log asynchronously: right after ``run.finish()`` returns it can still
    hold only its 7-byte header (seen under load in the full suite). ``wandb.teardown()`` waits
    for the service to exit, which flushes every open log; the next ``wandb.init`` starts a new
    service."""
    import wandb

    wandb.teardown()
    logs = sorted(Path(directory, "wandb").glob("offline-run-*/run-*.wandb"))
    if len(logs) != 1:
        raise AssertionError(f"expected one offline run under {directory}/wandb, found {len(logs)}")
    return logs[0]
