"""The Ray Data batch engine: the prompt table streamed through one actor pool per stage.

    ray job submit --working-dir . -- python -m cluster.batch --input prompts.parquet --output out/ --engine data

Ray Data reads the table (`read_parquet`, `read_csv`, `read_text` for JSONL; a file or a folder of
them, on any `pyarrow.fs`); the driver gives the rows their ids and skips the ones done before, then
validation, content filter and result cache -> one pool per stage of the stage list
(stages/stage_list.py: encode -> high-noise -> low-noise -> decode and score) -> the keeper,
which re-enters the stages from the boundary for rows below their `min_physics_score` (by the
same rule as the other executors; on the low-noise expert's resources when any row asks) and
writes the kept video. Each pool is a Ray Data `map` over the same stage classes the Serve
deployments wrap, each row carrying its `JobState` in one column, placed and sized from
`Settings.deployments` (`num_cpus`, `num_gpus`, `min_replicas` to `max_replicas` actors), so
`t2v plan --gpus N` sizes both. Ray Data streams
rows from pool to pool with backpressure, on any Ray cluster, with or without a Serve app. The
decoders write each video to the output store; the driver records every row in the manifest as
it arrives, so a killed run resumes as the other engines' do, each row exactly once. Rows of one
template share the high-noise phase through the node's latent cache: the first computes it, the
rest read it. A row that fails at any stage carries its error to the end and fails alone.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import AsyncIterator, Iterator
from typing import Any

from cache.store import LatentCache
from cluster.batch_engine import Outcome, RowResult
from cluster.prompt_table import InputError, Row, csv_options, json_records, line_names, locate, rows_from_records
from contract.errors import RequestInvalid, error_summary
from contract.experts import ExpertKind
from contract.messages import Video
from contract.request import GenerationRequest
from contract.settings import Settings
from contract.storage import OutputStore
from monitoring.metrics import metrics
from stages.checkpoint import Checkpoint
from stages.job_state import JobState, total_timings
from stages.stage import Stage
from stages.stage_list import (
    STAGE_LIST,
    DecodeVideo,
    EncodePrompt,
    HighNoisePhase,
    LowNoisePhase,
    ResultCache,
    StageSpec,
    kept_video,
    wants_repair,
)
from stages.validation import RequestValidator

logger = logging.getLogger(__name__)


def _pack(state: JobState) -> bytes:
    return pickle.dumps(state)


def _unpack(data: bytes) -> JobState:
    return pickle.loads(data)  # written by a pool before, in this run


def build_stage(name: str, settings: Settings, checkpoint: Checkpoint) -> Stage:
    """The stage of the list named `name` on this actor's own models (in process, as a
    pipeline's): the same classes the Serve deployments wrap."""
    from stages.decoder import Decoder
    from stages.expert import Expert
    from stages.text_encoder import TextEncoder

    cache = LatentCache.from_settings(settings)
    if name == EncodePrompt.name:
        return EncodePrompt(TextEncoder(checkpoint, cache))
    if name == HighNoisePhase.name:  # a template's rows share its high-noise phase through the node cache
        return HighNoisePhase(Expert(checkpoint, ExpertKind.HIGH_NOISE, batching=False), cache)
    if name == LowNoisePhase.name:
        return LowNoisePhase(Expert(checkpoint, ExpertKind.LOW_NOISE, batching=False))
    return DecodeVideo(Decoder(checkpoint))


class RowActor:
    """One pool's actor: a row carries its `JobState` (one column) or the error that failed it."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.checkpoint = Checkpoint.from_settings(settings)

    def failed(self, row: dict[str, Any], error: BaseException, where: str) -> dict[str, Any]:
        """Whatever goes wrong with one row fails that row alone."""
        logger.exception("row %s: %s failed", row["id"], where)
        return {**row, "state": None, "error_code": "generation_failed", "error": error_summary(error)}


def validated(validator: RequestValidator, fields: dict[str, Any]) -> GenerationRequest | RequestInvalid:
    """The request a row's fields make, or why they make none."""
    # A shot's preview lives in the app's output store: its final is the app's to make (said by
    # name, never dropped).
    if fields.get("from", fields.get("from_video")) is not None:
        return RequestInvalid.of("from", "finals of shots run on --engine serve")
    try:
        return validator.body(fields)
    except RequestInvalid as invalid:
        return invalid


class ValidateRows(RowActor):
    """The request a row makes, as `POST /v1/videos` would validate it, and the result cache."""

    def __init__(self, settings: Settings):
        super().__init__(settings)
        self.validator = RequestValidator(settings, self.checkpoint)
        self.results = ResultCache(LatentCache.from_settings(settings), self.checkpoint.identity)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["error_code"] is not None:
            return row
        request = validated(self.validator, json.loads(row["fields"]))
        if isinstance(request, RequestInvalid):
            return {**row, "error_code": request.code, "error": request.message}
        state = JobState(row["id"], request)
        hit = self.results.in_hand(self.results.cached(request), OutputStore(self.settings.output_uri))
        if hit is not None:
            state.video = Video(attempt=0, seed=request.seed, physics=hit.physics, mp4=hit.mp4)
        if self.results.used(request):
            state.cache["result"] = hit is not None
        return {**row, "state": _pack(state)}


class StageRows(RowActor):
    """A stage of the list (stage_list.py) over rows: a row the result cache answered, or one that
    failed before, passes through."""

    def __init__(self, settings: Settings, spec: StageSpec):
        super().__init__(settings)
        self.spec = spec
        self.stage = build_stage(spec.name, settings, self.checkpoint)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["state"] is None:
            return row
        state = _unpack(row["state"])
        if state.video is not None or not self.spec.applies(state, self.checkpoint.has_low_noise_expert):
            return row
        try:
            return {**row, "state": _pack(self.stage(state))}
        except Exception as error:
            return self.failed(row, error, self.spec.name)


class KeepRows(RowActor):
    """Generate, verify, repair, keep, as the other executors do: a row below its
    `min_physics_score` re-enters the stages from the boundary (`stage_list.REPAIR_FROM`: the
    low-noise phase and the decoder) with derived seeds while `wants_repair` says so; then the
    kept video is written to the output store, remembered by the result cache and its score
    exported. With `repairs`, a pool of its own on the low-noise expert's resources."""

    def __init__(self, settings: Settings, output_uri: str, repairs: bool):
        super().__init__(settings)
        self.store = OutputStore(output_uri)
        self.results = ResultCache(LatentCache.from_settings(settings), self.checkpoint.identity)
        self.repair = (
            [build_stage(name, settings, self.checkpoint) for name in (LowNoisePhase.name, DecodeVideo.name)]
            if repairs
            else []
        )

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["state"] is None:
            return row
        state = _unpack(row["state"])
        try:
            return self.keep(row, state, self.attempts(state))
        except Exception as error:
            return self.failed(row, error, "repair")

    def attempts(self, first: JobState) -> list[JobState]:
        attempts = [first]
        if first.cache.get("result") or not self.repair:  # from the result cache: kept as it was
            return attempts
        low_noise, decode = self.repair
        min_dynamics = self.settings.repair_min_dynamics
        while wants_repair(first.request, [a.video.physics for a in attempts], min_dynamics):
            attempts.append(decode(low_noise(first, attempt=len(attempts))))
        return attempts

    def keep(self, row: dict[str, Any], first: JobState, attempts: list[JobState]) -> dict[str, Any]:
        request = first.request
        video = attempts[0].video
        if not first.cache.get("result"):
            video = kept_video([a.video for a in attempts], self.settings.repair_min_dynamics)
            metrics.physics(video.physics, request.template, self.checkpoint.model_id, engine="data")
            self.results.remember(request, video.physics, {"mp4": video.mp4})
        key = f"videos/{row['id']}.mp4"
        self.store.write(key, video.mp4)
        summary = first.slim().copy(
            video=video.model_copy(update={"mp4": None}), timings=total_timings(attempts), frames=None
        )
        return {**row, "state": _pack(summary), "output": self.store.location(key)}


class DataEngine:
    """Rows through Ray Data, one actor pool per stage (module docstring)."""

    name = "data"

    def __init__(self, settings: Settings, address: str | None = None):
        import ray

        from cluster.launch import ray_environment, running_cluster

        ray_environment()
        if not ray.is_initialized():
            # `ray job submit` sets RAY_ADDRESS; without a cluster, one is started for this run.
            ray.init(address=address or running_cluster(), logging_level="WARNING")
        self.settings = settings
        self.checkpoint = Checkpoint.from_settings(settings)

    async def model_id(self) -> str:
        return self.checkpoint.model_id

    def read_table(self, uri: str) -> tuple[list[Row], list[str]]:
        """The prompt table read by Ray Data, in file order, as `cluster.prompt_table.read_table`
        reads it: `read_parquet`, `read_csv`, or `read_text` for JSONL (a line that is not JSON
        fails its row; `read_json` would fail the table). A folder of such files is one table."""
        import ray.data

        fs, files, kind = locate(uri)
        context = ray.data.DataContext.get_current()
        preserve_order, context.execution_options.preserve_order = context.execution_options.preserve_order, True
        try:
            if kind == "parquet":
                dataset = ray.data.read_parquet(files, filesystem=fs)
            elif kind == "csv":
                with fs.open_input_stream(files[0]) as f:
                    header = f.read(1 << 16).split(b"\n", 1)[0] + b"\n"
                dataset = ray.data.read_csv(files, filesystem=fs, convert_options=csv_options(header))
            else:
                dataset = ray.data.read_text(files, filesystem=fs, drop_empty_lines=False, include_paths=True)
            tables = list(dataset.iter_batches(batch_format="pyarrow", batch_size=None))
        except Exception as error:  # an unreadable file: the table as a whole is unusable
            raise InputError(f"{uri}: cannot read the input: {error_summary(error)}") from None
        finally:
            context.execution_options.preserve_order = preserve_order
        if kind != "jsonl":
            return rows_from_records([record for table in tables for record in table.to_pylist()])
        lines: dict[str, list[str]] = {}  # per file, in order
        for table in tables:
            for file, line in zip(table["path"].to_pylist(), table["text"].to_pylist(), strict=True):
                lines.setdefault(file, []).append(line)
        where = line_names(files)
        return rows_from_records([r for file, text in lines.items() for r in json_records(text, where(file))])

    @staticmethod
    def _actors(least: int, most: int):
        import ray.data

        return ray.data.ActorPoolStrategy(min_size=least, max_size=max(least, most))

    def _pool(self, name: str) -> dict[str, Any]:
        """A pool's `map` options from the deployment of the same stage (an actor of a parallel
        expert starts its ranks as a replica does: Ray places them, no placement group)."""
        deployment = self.settings.deployments[name]
        return {
            "compute": self._actors(deployment.min_replicas, deployment.max_replicas),
            **deployment.replica_resources,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(deployment.threads), "OMP_WAIT_POLICY": "PASSIVE"}},
        }

    def stream(self, rows: list[Row], output_uri: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(row id, finished row) as each comes out of the last pool: the stage list's pools, in
        its order, then the keeper (a pool of its own where rows may be repaired)."""
        import ray.data

        items = [
            {
                "id": row.id,
                "fields": json.dumps(row.request_fields(), ensure_ascii=False, default=str),
                "state": None,
                "error_code": None,
                "error": None,
                "output": None,
            }
            for row in rows
        ]
        settings = {"settings": self.settings}
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        dataset = dataset.map(ValidateRows, fn_constructor_kwargs=settings, **self._pool("Ingress"))
        two_experts = self.checkpoint.has_low_noise_expert
        for spec in STAGE_LIST:
            if spec.name == LowNoisePhase.name and not two_experts:
                continue
            dataset = dataset.map(
                StageRows, fn_constructor_kwargs={**settings, "spec": spec}, **self._pool(spec.deployment)
            )
        repairs = two_experts and any("min_physics_score" in row.fields for row in rows)
        keep = {"fn_constructor_kwargs": {**settings, "output_uri": output_uri, "repairs": repairs}}
        if repairs:  # its GPU: the re-sampling expert's
            pool = self._pool(ExpertKind.LOW_NOISE.deployment)
            pool["compute"] = self._actors(1, self.settings.deployments[ExpertKind.LOW_NOISE.deployment].max_replicas)
        else:
            pool = self._pool("Decoder")
        dataset = dataset.map(KeepRows, **keep, **pool)
        for row in dataset.iter_rows():
            yield row["id"], row

    def how(self, concurrency: int | None) -> str:
        return "one actor pool per stage"

    async def results(self, rows: list[Row], output: OutputStore, concurrency: int | None) -> AsyncIterator[RowResult]:
        """The rows as one dataset through the pools (`stream`), each back as it finishes."""
        # Rows no request comes of fail here, in the driver: a rerun of only those starts no pool.
        validator, valid = RequestValidator(self.settings, self.checkpoint), []
        for row in rows:
            request = validated(validator, row.request_fields())
            if isinstance(request, RequestInvalid):
                yield RowResult(row, Outcome.failed(request.code, request.message), None, 0.0)
            else:
                valid.append(row)
        if not valid:  # every row done before, or refused: no pool to start
            return
        by_id = {row.id: row for row in valid}
        for row_id, finished in self.stream(valid, output.uri):
            outcome = self.outcome(finished)
            yield RowResult(by_id[row_id], outcome, finished["output"], sum(outcome.job["timings"].values()))

    def outcome(self, row: dict[str, Any]) -> Outcome:
        """The finished row as the other engines' `Outcome`."""
        state = _unpack(row["state"]) if row["state"] is not None else None
        job = {
            "request": state.request.model_dump() if state else {},
            "timings": state.timings if state else {},
            "cache": state.cache if state else {},
            "physics": state.video.physics.model_dump() if state and state.video else None,
            "model": self.checkpoint.model_id,
            "id": None,
        }
        if row["error_code"] is not None:
            return Outcome("failed", job, None, row["error_code"], row["error"])
        return Outcome("completed", job, None)
