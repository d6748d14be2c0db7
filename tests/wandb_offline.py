"""Read the records of an offline W&B run (`run-<id>.wandb`) without a server.

The file is a LevelDB-style log: a 7-byte W&B header, then 32 KiB blocks of chunks, each with a
7-byte header (crc32, length, type) carrying pieces of serialized `wandb_internal_pb2.Record`s.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: Path):
    data = Path(path).read_bytes()
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < 7:
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record
        if kind == 0 and length == 0:
            break


def read_offline_run(run_dir: Path) -> dict:
    """{"config": {...}, "history": [{key: value}], "run": the run record} of an offline run."""
    (wandb_file,) = Path(run_dir).glob("run-*.wandb")
    config, history, run = {}, [], None
    for record in iter_records(wandb_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config |= {item.key: json.loads(item.value_json) for item in run.config.update}
        elif kind == "config":
            config |= {item.key: json.loads(item.value_json) for item in record.config.update}
        elif kind == "history":
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
    return {"config": config, "history": history, "run": run}
