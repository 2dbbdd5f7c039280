"""The one protocol of a batch engine: rows in, each row's `RowResult` out as it finishes, its
`Outcome` in the job record's shape whichever engine made it.

`RequestEngine` is the engines that take one request at a time (the Serve app's ingress, the
in-process pipeline), a few in flight; the Ray Data engine streams the whole table through its
pools (cluster/data_engine.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from cluster.prompt_table import Row
from contract.errors import error_summary
from contract.storage import OutputStore


class EngineError(RuntimeError):
    """The engine cannot run at all (no cluster, no Serve app)."""


@dataclass
class Outcome:
    """One row's result, in the job record's shape whichever engine made it."""

    status: str  # completed | failed
    job: dict[str, Any] = field(default_factory=dict)  # request, timings, cache, physics, model, id
    mp4: bytes | None = None
    error_code: str | None = None
    error: str | None = None

    @classmethod
    def failed(cls, code: str, message: str) -> Outcome:
        return cls("failed", error_code=code, error=message)


@dataclass
class RowResult:
    row: Row
    outcome: Outcome
    output: str | None  # where the row's video went
    seconds: float


def video_key(row: Row) -> str:
    return f"videos/{row.id}.mp4"


class BatchEngine(Protocol):
    name: str

    async def model_id(self) -> str: ...

    def read_table(self, uri: str) -> tuple[list[Row], list[str]]:
        """The table's rows (each readable or carrying its error) and the columns ignored."""
        ...

    def how(self, concurrency: int | None) -> str:
        """How the rows run, for the run's first line."""
        ...

    def results(self, rows: list[Row], output: OutputStore, concurrency: int | None) -> AsyncIterator[RowResult]:
        """Each readable row's result as it finishes, its video written under `video_key`."""
        ...


class RequestEngine:
    """An engine that makes one request at a time (`generate`), `concurrency` rows in flight."""

    name = ""
    default_concurrency = 1

    async def generate(self, fields: dict[str, Any]) -> Outcome:
        raise NotImplementedError

    def how(self, concurrency: int | None) -> str:
        return f"{concurrency or self.default_concurrency} at a time"

    async def results(self, rows: list[Row], output: OutputStore, concurrency: int | None) -> AsyncIterator[RowResult]:
        queue: asyncio.Queue[Row] = asyncio.Queue()
        for row in rows:
            queue.put_nowait(row)
        done: asyncio.Queue[RowResult | None] = asyncio.Queue()

        async def worker() -> None:
            while not queue.empty():
                row = queue.get_nowait()
                start = time.monotonic()
                try:
                    outcome = await self.generate(row.request_fields())
                except Exception as error:  # whatever goes wrong with one row fails that row alone
                    outcome = Outcome.failed("generation_failed", error_summary(error))
                location = None
                if outcome.mp4 is not None:
                    output.write(video_key(row), outcome.mp4)
                    location = output.location(video_key(row))
                await done.put(RowResult(row, outcome, location, time.monotonic() - start))

        workers = min(concurrency or self.default_concurrency, len(rows)) or 1
        tasks = [asyncio.create_task(worker()) for _ in range(workers)]
        finished = asyncio.gather(*tasks)
        finished.add_done_callback(lambda _: done.put_nowait(None))
        while (result := await done.get()) is not None:
            yield result
        await finished  # a worker's own failure (not a row's) surfaces here
