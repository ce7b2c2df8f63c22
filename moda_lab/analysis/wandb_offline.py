"""Read offline wandb runs (``wandb/offline-run-*/run-<id>.wandb``) without syncing them.

The ``.wandb`` file is a LevelDB-style log of protobuf ``Record`` messages (the format wandb's own ``sync``
reads): a 7-byte file header (``":W&B"``, magic 0xBEE1, version), then 32 KiB blocks of chunks, each chunk
with a 7-byte header (crc32, length, type) where type FULL/FIRST/MIDDLE/LAST reassembles records across blocks.
Only the record kinds needed here are decoded: run (config, name), config updates, history rows and exit code.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from moda_lab.analysis.history import history_frame, normalise_wandb_row
from moda_lab.analysis.records import RunIssue, RunRecord, unwrap_wandb_config

from ..errors import UsageError

_FILE_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_FILE_IDENT, _FILE_MAGIC = b":W&B", 0xBEE1
_CHUNK_HEADER = struct.Struct("<IHB")  # crc32, length, type
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


class WandbFileError(UsageError):
    """The file is not a readable ``.wandb`` log."""


@dataclass
class _Chunks:
    records: list[bytes]
    truncated: bool
    bad_crc: int


def _read_chunks(data: bytes) -> _Chunks:
    if len(data) < _FILE_HEADER.size:
        raise WandbFileError("file shorter than the wandb header")
    ident, magic, _version = _FILE_HEADER.unpack_from(data, 0)
    if ident != _FILE_IDENT or magic != _FILE_MAGIC:
        raise WandbFileError(f"not a wandb log (ident={ident!r}, magic={magic:#x})")
    out = _Chunks(records=[], truncated=False, bad_crc=0)
    pos, pending = _FILE_HEADER.size, b""
    while pos < len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _CHUNK_HEADER.size:  # block trailer padding
            pos += room
            continue
        if pos + _CHUNK_HEADER.size > len(data):
            out.truncated = True
            break
        crc, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        pos += _CHUNK_HEADER.size
        if kind == 0 and length == 0:  # zero padding written by a writer that was cut
            continue
        chunk = data[pos : pos + length]
        pos += length
        if len(chunk) < length:
            out.truncated = True
            break
        # The crc covers the type byte then the payload.
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            out.bad_crc += 1
            pending = b""
            continue
        if kind == _FULL:
            out.records.append(chunk)
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            out.records.append(pending + chunk)
            pending = b""
    return out


def _item_key(item: Any) -> str:
    return item.key if item.key else ".".join(item.nested_key)


def _json(value_json: str) -> Any:
    try:
        return json.loads(value_json)
    except json.JSONDecodeError:
        return None


def iter_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(record_type, message)`` for each decodable record of a ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb  # optional dependency, imported only when needed

    chunks = _read_chunks(Path(path).read_bytes())
    for raw in chunks.records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind:
            yield kind, getattr(rec, kind)
    if chunks.truncated or chunks.bad_crc:
        yield "_damage", {"truncated": chunks.truncated, "bad_crc": chunks.bad_crc}


def read_offline_run(path: str | Path, run_name: str | None = None) -> RunRecord:
    """One offline run folder (or its ``.wandb`` file) -> :class:`RunRecord` with config and history."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("run-*.wandb"))
    name = run_name or path.name
    record = RunRecord(run=name, source="wandb-offline", path=str(path), status="unknown")
    if not files:
        record.add_issue("missing_metrics", "offline wandb folder has no run-*.wandb file")
        record.status = "missing"
        return record
    config: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    exit_code: int | None = None
    try:
        records = list(iter_records(files[0]))
    except (WandbFileError, OSError) as err:
        record.add_issue("bad_wandb_file", str(err))
        record.status = "missing"
        return record
    for kind, msg in records:
        if kind == "run":
            config.update({i.key: _json(i.value_json) for i in msg.config.update})
            record.run = run_name or msg.display_name or msg.run_id or name
            record.meta = {"wandb_id": msg.run_id, "project": msg.project}
        elif kind == "config":
            config.update({_item_key(i): _json(i.value_json) for i in msg.update})
        elif kind == "history":
            rows.append({_item_key(i): _json(i.value_json) for i in msg.item})
        elif kind == "exit":
            exit_code = int(msg.exit_code)
        elif kind == "_damage":
            record.add_issue(
                "truncated_wandb", f"{files[0].name}: truncated={msg['truncated']} bad_crc={msg['bad_crc']}"
            )
    record.config = unwrap_wandb_config(config)
    record.history = history_frame(normalise_wandb_row(r) for r in rows)
    if exit_code is None:
        record.status = "running"
        record.add_issue("no_exit_record", "no exit record (still running, or killed)")
    else:
        record.status = "finished" if exit_code == 0 else "failed"
    return record


def find_offline_runs(root: str | Path) -> list[Path]:
    """``offline-run-*`` folders under ``root`` (``root/wandb/`` or deeper), oldest first."""
    root = Path(root)
    found = {p for p in root.rglob("offline-run-*") if p.is_dir()}
    return sorted(found, key=lambda p: p.name)  # names start with the launch timestamp


def load_offline_runs(folders: list[Path], run_name: str | None = None) -> RunRecord:
    """Merge the offline folders of one run (a resumed run writes one folder per launch); later launches win."""
    parts = [read_offline_run(f, run_name=run_name) for f in folders]
    name = run_name or parts[-1].run
    merged = RunRecord(
        run=name, source="wandb-offline", path=str(folders[-1]), status=parts[-1].status, meta=parts[-1].meta
    )
    for part in parts:
        merged.config.update(part.config)
        # Only the latest launch tells whether the run is still going.
        keep = part is parts[-1]
        merged.issues.extend(
            RunIssue(name, i.kind, i.detail) for i in part.issues if keep or i.kind != "no_exit_record"
        )
    frames = [p.history for p in parts if not p.history.empty]
    rows = pd.concat(frames, ignore_index=True).to_dict("records") if frames else []
    merged.history = history_frame(rows)
    return merged


def load_offline_dir(root: str | Path) -> list[RunRecord]:
    """Every offline run under ``root``, grouped by wandb run id (resumed launches merged)."""
    by_id: dict[str, list[Path]] = {}
    for folder in find_offline_runs(root):
        by_id.setdefault(folder.name.rsplit("-", 1)[-1], []).append(folder)
    return [load_offline_runs(folders) for folders in by_id.values()]
