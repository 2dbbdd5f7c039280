"""The manifest of a batch run: one Parquet row per input row, written as rows finish.

Each finished row is written at once as a one-row Parquet part under `manifest.parts/`
(a crash loses nothing finished, and it works on object stores, which cannot append);
`compact` folds the parts into `manifest.parquet`, newest record per id winning, so a
resumed run never shows a row twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from contract.errors import error_summary
from contract.storage import OutputStore
from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

STAGES = ("queue", "encode", "high_noise", "low_noise", "decode", "mp4", "score")

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("row", pa.int64()),  # position in the input file
        ("request_hash", pa.string()),
        ("status", pa.string()),  # completed | failed
        ("error_code", pa.string()),
        ("error", pa.string()),
        ("output", pa.string()),  # the mp4's path or URI
        ("prompt", pa.string()),
        ("template", pa.string()),
        ("slots", pa.map_(pa.string(), pa.string())),
        ("seed", pa.int64()),
        ("preset", pa.string()),
        ("size", pa.string()),
        ("num_frames", pa.int64()),
        ("num_inference_steps", pa.int64()),
        ("guidance_scale", pa.float64()),  # 1: no unconditional pass (a distilled adapter's)
        ("guidance_scale_2", pa.float64()),
        ("lora", pa.list_(pa.struct([("name", pa.string()), ("scale", pa.float64())]))),
        ("physics_score", pa.float64()),
        ("physics_subscores", pa.map_(pa.string(), pa.float64())),
        ("physics_attempts", pa.int64()),  # 1 + re-samples made for min_physics_score
        ("physics_dynamics", pa.float64()),  # how much the scene moves (frame sizes per second)
        (
            "physics_violations",
            pa.list_(pa.struct([("kind", pa.string()), ("frames", pa.list_(pa.int64())), ("track", pa.int64())])),
        ),
        ("cache_hits", pa.list_(pa.string())),  # levels hit: embeddings, boundary, result
        ("seconds_total", pa.float64()),
        *[(f"seconds_{stage}", pa.float64()) for stage in STAGES],
        ("model_id", pa.string()),
        ("job_id", pa.string()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
    ]
)

PARTS = "manifest.parts"
MANIFEST = "manifest.parquet"


def _to_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _from_bytes(data: bytes) -> pa.Table:
    table = pq.read_table(pa.BufferReader(data))
    for name in SCHEMA.names:  # a manifest written before a column existed: that column is empty
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(len(table), SCHEMA.field(name).type))
    return table.select(SCHEMA.names).cast(SCHEMA)


class Manifest:
    def __init__(self, store: OutputStore):
        self.store = store
        self.unreadable: list[str] = []  # files that did not parse, skipped

    def record(self, entry: dict[str, Any]) -> None:
        """Durably note one finished row (before the caller moves on)."""
        entry = {**entry, "finished_at": entry.get("finished_at") or time.time()}
        entry["finished_at"] = pa.scalar(int(entry["finished_at"] * 1000), pa.timestamp("ms", tz="UTC"))
        table = pa.Table.from_pylist([{name: entry.get(name) for name in SCHEMA.names}], schema=SCHEMA)
        # Time first in the name: parts list in the order they were written.
        self.store.write(f"{PARTS}/{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet", _to_bytes(table))

    def _tables(self) -> tuple[list[pa.Table], list[str]]:
        """The manifest and its parts, oldest first, and the parts read (to fold in). A file that
        does not parse is logged, counted and left where it is: never folded in, never deleted."""
        tables, parts = [], []
        for key in (MANIFEST, *sorted(self.store.keys(PARTS))):
            if (data := self.store.read(key)) is None:
                continue
            try:
                tables.append(_from_bytes(data))
            except (pa.ArrowException, ValueError) as error:
                logger.warning("manifest: skipped unreadable %s: %s", key, error_summary(error))
                self.unreadable.append(key)
                metrics.inc("unreadable", store="manifest")
                continue
            if key != MANIFEST:
                parts.append(key)
        return tables, parts

    @staticmethod
    def _latest(tables: list[pa.Table]) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for table in tables:  # oldest first: later records win
            for entry in table.to_pylist():
                latest[entry["id"]] = entry
        return latest

    def load(self) -> dict[str, dict[str, Any]]:
        """The latest record of every id, from the manifest and any parts not yet folded in."""
        return self._latest(self._tables()[0])

    def compact(self, order: Iterable[str] = ()) -> pa.Table:
        """Fold the parts into manifest.parquet: one row per id, in `order` (the input's)
        first, then any ids of earlier runs. The parts go only after the manifest is written."""
        tables, parts = self._tables()
        latest = self._latest(tables)
        ids = [i for i in order if i in latest]
        ids += sorted(set(latest) - set(ids))
        table = pa.Table.from_pylist([latest[i] for i in ids], schema=SCHEMA)
        self.store.write(MANIFEST, _to_bytes(table))
        for key in parts:
            self.store.delete(key)
        return table
