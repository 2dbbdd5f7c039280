"""The Ray Data batch engine: the prompt table streamed through one actor pool per stage.

    ray job submit --working-dir . -- python -m cluster.batch --input prompts.parquet --output out/ --engine data

Ray Data reads the table (`read_parquet`, `read_csv`, `read_text` for JSONL; a file or a folder of
them, on any `pyarrow.fs`); the driver gives the rows their ids and skips the ones done before, then
validation, content filter and result cache -> text-encoder pool -> high-noise expert pool ->
low-noise expert pool -> decoder-and-scorer pool (-> a repair pool, when rows ask for a
`min_physics_score`: their detail phase re-sampled as the app does). Each pool is a Ray Data
`map` over a callable class around the stage classes the Serve deployments wrap (`TextEncoder`,
`Expert`, `Decoder`), placed and sized from `Settings.deployments` (`num_cpus`, `num_gpus`,
`min_replicas` to `max_replicas` actors), so `t2v plan --gpus N` sizes both. Ray Data streams
rows from pool to pool with backpressure, on any Ray cluster, with or without a Serve app. The
decoders write each video to the output store; the driver records every row in the manifest as
it arrives, so a killed run resumes as the other engines' do, each row exactly once. Rows of one
template share the high-noise phase through the node's latent cache: the first computes it, the
rest read it. A row that fails at any stage carries its error to the end and fails alone.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import torch

from cache.keys import result_key
from cache.store import LatentCache
from cluster.batch_engine import Outcome
from cluster.prompt_table import InputError, Row, csv_options, json_records, line_names, locate, rows_from_records
from contract.errors import RequestInvalid, error_summary
from contract.experts import ExpertKind
from contract.messages import PhysicsAttempt
from contract.request import GenerationRequest
from contract.settings import Settings
from contract.storage import OutputStore
from monitoring.metrics import metrics
from stages.checkpoint import Checkpoint
from stages.runner import best_attempt

logger = logging.getLogger(__name__)

# Every row has every column from the start: Arrow needs one schema for the whole stream.
COLUMNS = (
    "error_code", "error", "request", "embeddings", "base", "state", "boundary", "attempts", "mp4", "physics", "output"
)  # fmt: skip


def _pack(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _unpack(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=False)  # written by the pool before, in this run


def _attempt(video, number: int, seed: int) -> tuple:
    """One try at a row's video as the repair loop keeps it: (mp4, physics, the attempt's record)."""
    physics = video.physics
    return video.mp4, physics, PhysicsAttempt(attempt=number, seed=seed, score=physics.score, dynamics=physics.dynamics)


class RowStage:
    """One pool's actor: its stage built once, then every row through `run`. A row that failed
    earlier passes through untouched; one that fails here carries its error on."""

    stage = ""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.checkpoint = Checkpoint.from_settings(settings)
        self.model = self.checkpoint.model_id

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["error_code"] is not None or row["mp4"] is not None:  # failed, or answered by the result cache
            return row
        start = time.perf_counter()
        try:
            row = self.run(row, GenerationRequest.load(row["request"], self.settings))
        except Exception as error:  # whatever goes wrong with one row fails that row alone
            logger.exception("row %s: %s failed", row["id"], self.stage)
            return {**row, "error_code": "generation_failed", "error": error_summary(error)}
        seconds = time.perf_counter() - start
        timings = json.loads(row["timings"])
        timings.setdefault(self.stage, seconds)  # the decoder notes its parts (decode, mp4, score) itself
        row["timings"] = json.dumps(timings)
        metrics.observe("stage", seconds, stage=self.stage, model=self.model)
        return row

    def run(self, row: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        raise NotImplementedError

    @staticmethod
    def note_cache(row: dict[str, Any], level: str, hit: bool | None) -> None:
        row["cache"] = json.dumps({**json.loads(row["cache"]), level: hit})


class ValidateRows(RowStage):
    """The request a row makes, as `POST /v1/videos` would validate it, and the result cache."""

    stage = "validate"

    def __init__(self, settings: Settings):
        from stages.validation import RequestValidator

        super().__init__(settings)
        self.validator = RequestValidator(settings, self.checkpoint)
        self.cache = LatentCache.from_settings(settings)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["error_code"] is not None:
            return row
        try:
            request = self.validator.body(json.loads(row["fields"]))
        except RequestInvalid as invalid:
            return {**row, "error_code": invalid.code, "error": invalid.message}
        # A shot's preview lives in the app's output store: its final is the app's to make (said by
        # name, never dropped).
        if request.from_video is not None:
            return {**row, "error_code": "invalid_request", "error": "from: finals of shots run on --engine serve"}
        row["request"] = request.model_dump_json()
        if self.cache is not None and request.cache:
            hit = self.cache.get("result", result_key(self.checkpoint.identity, request))
            self.note_cache(row, "result", hit is not None)
            if hit is not None:
                row["mp4"], row["physics"] = hit["mp4"], json.dumps(hit["physics"])
        return row


class EncodeRows(RowStage):
    stage = "encode"

    def __init__(self, settings: Settings):
        from stages.text_encoder import TextEncoder

        super().__init__(settings)
        self.cache = LatentCache.from_settings(settings)
        self.encoder = TextEncoder(self.checkpoint, self.cache)

    def run(self, row: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        def encode(text: str):
            return self.encoder(text, request.negative_prompt, request.classifier_free_guidance, request.cache)

        embeddings = encode(request.prompt)
        self.note_cache(row, "embeddings", embeddings.cache_hit if self.cache is not None and request.cache else None)
        row["embeddings"] = _pack(embeddings)
        row["base"] = _pack(encode(request.base_prompt)) if request.template_mode else None
        return row


class HighNoiseRows(RowStage):
    stage = ExpertKind.HIGH_NOISE.stage

    def __init__(self, settings: Settings):
        from stages.expert import Expert

        super().__init__(settings)
        self.expert = Expert(self.checkpoint, ExpertKind.HIGH_NOISE, batching=False)
        self.cache = LatentCache.from_settings(settings)

    def run(self, row: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        base = _unpack(row["base"]) if row["base"] is not None else None
        state, hit = self.expert.shared_phase(request, _unpack(row["embeddings"]), base, self.cache)
        self.note_cache(row, "boundary", hit)
        row["state"], row["base"] = _pack(state.as_plain()), None
        if request.min_physics_score is not None and self.checkpoint.has_low_noise_expert:
            row["boundary"] = row["state"]  # where a repair re-samples the detail phase from
        return row


class LowNoiseRows(RowStage):
    stage = ExpertKind.LOW_NOISE.stage

    def __init__(self, settings: Settings):
        from stages.expert import Expert

        super().__init__(settings)
        self.expert = Expert(self.checkpoint, ExpertKind.LOW_NOISE, batching=False)

    def run(self, row: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        from stages.denoising import DenoisingState

        boundary = DenoisingState.from_plain(_unpack(row["state"]))
        row["state"] = _pack(self.expert.phase(request, _unpack(row["embeddings"]), boundary).as_plain())
        return row


class DecodeRows(RowStage):
    """VAE decode, mp4, physics score; the mp4 goes to the output store and the result cache."""

    stage = "decode"

    def __init__(self, settings: Settings, output_uri: str):
        from stages.decoder import Decoder

        super().__init__(settings)
        self.decoder = Decoder(self.checkpoint)
        self.store = OutputStore(output_uri)
        self.cache = LatentCache.from_settings(settings)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["error_code"] is None and row["mp4"] is not None:  # from the result cache: only written
            return self.write(row, row["mp4"])
        return super().__call__(row)

    def run(self, row: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        from stages.denoising import DenoisingState

        video = self.decoder.video(request, DenoisingState.from_plain(_unpack(row["state"])).latents)
        row["timings"] = json.dumps({**json.loads(row["timings"]), **video.timings})
        attempt = _attempt(video, 0, request.seed)
        row["state"] = None
        if row["boundary"] is not None and video.physics.score < request.min_physics_score:
            row["attempts"] = _pack([attempt])  # below the request's minimum: the repair pool's turn
            return row
        return self.keep(row, request, [attempt])

    def keep(self, row: dict[str, Any], request: GenerationRequest, attempts: list[tuple]) -> dict[str, Any]:
        """The best of a row's videos: written, remembered by the result cache, its score exported."""
        best = best_attempt([physics for _, physics, _ in attempts], self.settings.repair_min_dynamics)
        mp4, physics, _ = attempts[best]
        physics = physics.model_copy(update={"attempts": [record for *_, record in attempts]})
        metrics.physics(physics, request.template, self.model, engine="data")
        if self.cache is not None and request.cache:
            key = result_key(self.checkpoint.identity, request)
            self.cache.put("result", key, {"mp4": mp4, "physics": physics.model_dump()})
        row["physics"] = physics.model_dump_json()
        row["embeddings"] = row["boundary"] = row["attempts"] = None
        return self.write(row, mp4)

    def write(self, row: dict[str, Any], mp4: bytes) -> dict[str, Any]:
        key = f"videos/{row['id']}.mp4"
        self.store.write(key, mp4)
        row["output"], row["mp4"] = self.store.location(key), None
        return row


class RepairRows(DecodeRows):
    """Generate, verify, repair, as the app does: a row below its `min_physics_score` has its
    detail phase re-sampled with derived seeds (`max_retries` at most) and keeps its best video.
    A pool of its own, after the decoders, so that the rows that pass stream on untouched."""

    stage = "repair"

    def __init__(self, settings: Settings, output_uri: str):
        from stages.expert import Expert

        super().__init__(settings, output_uri)
        self.expert = Expert(self.checkpoint, ExpertKind.LOW_NOISE, batching=False)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        if row["attempts"] is None:  # kept by the decoders (or failed): nothing to repair
            return row
        return RowStage.__call__(self, row)

    def run(self, row: dict[str, Any], request: GenerationRequest) -> dict[str, Any]:
        from stages.denoising import DenoisingState

        attempts = _unpack(row["attempts"])
        embeddings, boundary = _unpack(row["embeddings"]), DenoisingState.from_plain(_unpack(row["boundary"]))
        for number in range(1, request.max_retries + 1):
            if max(physics.score for _, physics, _ in attempts) >= request.min_physics_score:
                break
            seed = request.resample_seed(number)
            state = self.expert.phase(request, embeddings, boundary, resample_seed=seed)
            video = self.decoder.video(request, state.latents, seed)
            attempts.append(_attempt(video, number, seed))
        return self.keep(row, request, attempts)


class DataEngine:
    """Rows through Ray Data, one actor pool per stage (module docstring)."""

    name = "data"
    default_concurrency = 1  # unused: each pool's size comes from the settings

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
        """A pool's `map` options from the deployment of the same stage."""
        deployment = self.settings.deployments[name]
        return {
            "compute": self._actors(deployment.min_replicas, deployment.max_replicas),
            "num_cpus": deployment.num_cpus,
            "num_gpus": deployment.num_gpus,
            "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(deployment.threads), "OMP_WAIT_POLICY": "PASSIVE"}},
        }

    def stream(self, rows: list[Row], output_uri: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """(row id, finished row) as each comes out of the last pool."""
        import ray.data

        items = [
            {
                "id": row.id,
                "fields": json.dumps(row.request_fields(), ensure_ascii=False, default=str),
                "cache": "{}",
                "timings": "{}",
                **dict.fromkeys(COLUMNS),
            }
            for row in rows
        ]
        settings = {"fn_constructor_kwargs": {"settings": self.settings}}
        dataset = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
        dataset = dataset.map(ValidateRows, **settings, **self._pool("Ingress"))
        dataset = dataset.map(EncodeRows, **settings, **self._pool("TextEncoder"))
        dataset = dataset.map(HighNoiseRows, **settings, **self._pool(ExpertKind.HIGH_NOISE.deployment))
        if self.checkpoint.has_low_noise_expert:
            dataset = dataset.map(LowNoiseRows, **settings, **self._pool(ExpertKind.LOW_NOISE.deployment))
        decode = {"fn_constructor_kwargs": {"settings": self.settings, "output_uri": output_uri}}
        dataset = dataset.map(DecodeRows, **decode, **self._pool("Decoder"))
        if self.checkpoint.has_low_noise_expert and any("min_physics_score" in row.fields for row in rows):
            low_noise = self._pool(ExpertKind.LOW_NOISE.deployment)  # its GPU: the re-sampling expert's
            low_noise["compute"] = self._actors(
                1, self.settings.deployments[ExpertKind.LOW_NOISE.deployment].max_replicas
            )
            dataset = dataset.map(RepairRows, **decode, **low_noise)
        for row in dataset.iter_rows():
            yield row["id"], row

    def outcome(self, row: dict[str, Any]):
        """The finished row as the other engines' `Outcome`."""
        request = json.loads(row["request"]) if row["request"] else {}
        job = {
            "request": request,
            "timings": json.loads(row["timings"]),
            "cache": json.loads(row["cache"]),
            "physics": json.loads(row["physics"]) if row["physics"] else None,
            "model": self.checkpoint.model_id,
            "id": None,
        }
        if row["error_code"] is not None:
            return Outcome("failed", job, None, row["error_code"], row["error"])
        return Outcome("completed", job, None)
