"""Batch runs: the prompt-table reader, the manifest, the in-process engine, and real
`ray job submit` runs against the session's Serve app (mixed rows, rerun, kill and resume,
Parquet, JSONL and CSV inputs)."""

from __future__ import annotations

import asyncio
import csv
import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cluster.batch import BatchRun, LocalEngine
from cluster.cli import app as cli
from cluster.manifest import MANIFEST, PARTS, Manifest, _to_bytes
from cluster.prompt_table import InputError, read_table
from contract.errors import RequestInvalid
from contract.storage import OutputStore
from monitoring.physics import VIOLATION_KINDS
from stages.checkpoint import Checkpoint
from stages.validation import RequestValidator
from stages.video import probe_mp4

REPO = Path(__file__).resolve().parent.parent
RAY = os.path.join(os.path.dirname(sys.executable), "ray")

VALID = [
    {"id": "cat", "prompt": "一只橘猫在草地上奔跑", "seed": 1, "steps": 4},
    {"id": "ball", "prompt": "a red ball bouncing on a wooden floor", "steps": 4},
    {"id": "shoe", "template": "product_showcase", "slots": {"product": "a running shoe"}, "steps": 4},
    {
        "id": "mug",
        "template": "product_showcase",
        "slots": {"product": "a ceramic mug", "surface": "a desk"},
        "steps": 4,
    },
]
BAD = [{"id": "bad-size", "prompt": "a dog", "size": "100x64"}, {"id": "unsafe", "prompt": "一个人被斩首的场景"}]


def write_table(rows: list[dict], path: Path, extra_lines: list[str] = ()) -> Path:
    """`rows` as Parquet, JSONL or CSV by suffix (CSV: slots as a JSON cell)."""
    columns = list(dict.fromkeys(k for r in rows for k in r))
    if path.suffix == ".jsonl":
        lines = [json.dumps(r, ensure_ascii=False) for r in rows] + list(extra_lines)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows]), path)
    else:
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
    return path


def manifest_rows(out: Path) -> dict[str, dict]:
    return {r["id"]: r for r in pq.read_table(out / MANIFEST).to_pylist()}


def validated(settings, row) -> dict | str:
    """The request a row resolves to, or its error message: what an engine would run."""
    if row.error:
        return row.error
    try:
        return RequestValidator(settings, Checkpoint.from_settings(settings)).body(row.request_fields()).model_dump()
    except RequestInvalid as e:
        return e.message


# -- the prompt table --------------------------------------------------------------------


def test_parquet_jsonl_and_csv_give_the_same_requests(settings, tmp_path):
    rows = [{**r, "notes": "campaign 7"} for r in VALID + BAD]
    tables = {
        fmt: read_table(str(write_table(rows, tmp_path / f"prompts.{fmt}"))) for fmt in ("jsonl", "parquet", "csv")
    }
    reference, ignored = tables["jsonl"]
    assert ignored == ["notes"]
    assert [r.id for r in reference] == [r["id"] for r in rows]
    for fmt, (table, ignored) in tables.items():
        assert ignored == ["notes"], fmt
        assert [validated(settings, r) for r in table] == [validated(settings, r) for r in reference], fmt
    results = [validated(settings, r) for r in reference]
    assert "width must be a multiple of 16" in results[4]
    assert "content filter (category: graphic_violence)" in results[5]
    assert results[3]["prompt"].startswith("product showcase: a ceramic mug on a desk")


def test_bad_lines_ids_and_duplicates(tmp_path):
    path = write_table(
        [
            {"id": "ok", "prompt": "a cat"},
            {"id": "no good!", "prompt": "a dog"},
            {"prompt": "a boat"},
            {"prompt": "a boat"},
        ],
        tmp_path / "p.jsonl",
        extra_lines=["{not json", "[1, 2]"],
    )
    rows, _ = read_table(str(path))
    assert [r.error is None for r in rows] == [True, False, True, True, False, False]
    assert "id: must be" in rows[1].error and "'no good!'" in rows[1].error
    assert rows[4].error.startswith("line 5: not valid JSON") and rows[5].error == "line 6: not a JSON object"
    # Rows without an id get one from their content: stable across reads, unique per occurrence.
    assert rows[2].id.startswith("row-") and rows[3].id == f"{rows[2].id}-2"
    assert [r.id for r in read_table(str(path))[0]] == [r.id for r in rows]
    # A free-form row without a seed gets one from its content: a rerun makes the same video.
    assert rows[2].request_fields()["seed"] == read_table(str(path))[0][2].request_fields()["seed"]

    write_table([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], tmp_path / "dup.jsonl")
    with pytest.raises(InputError, match="id 'a' appears more than once"):
        read_table(str(tmp_path / "dup.jsonl"))
    with pytest.raises(InputError, match="unknown input format"):
        read_table(str(tmp_path / "prompts.xlsx"))
    with pytest.raises(InputError, match="cannot read"):
        read_table(str(tmp_path / "missing.jsonl"))


def test_cli_names_the_problem(tmp_path):
    write_table([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], tmp_path / "dup.jsonl")
    runner = CliRunner()
    dup = ["batch", "--input", str(tmp_path / "dup.jsonl"), "--output", str(tmp_path / "o"), "--engine", "local"]
    result = runner.invoke(cli, dup)
    assert result.exit_code == 2 and "appears more than once" in result.output
    result = runner.invoke(cli, ["batch", "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 2 and "cannot read the input" in result.output
    result = runner.invoke(cli, ["batch", "-i", str(tmp_path / "dup.jsonl"), "-o", "x", "--engine", "spark"])
    assert result.exit_code == 2 and "'spark' is not one of" in result.output


# -- the manifest ------------------------------------------------------------------------


def test_manifest_keeps_the_latest_record_per_id(tmp_path):
    store = OutputStore(str(tmp_path))
    manifest = Manifest(store)
    manifest.record({"id": "a", "row": 0, "status": "failed", "error": "boom", "cache_hits": []})
    manifest.record(
        {
            "id": "b",
            "row": 1,
            "status": "completed",
            "physics_subscores": {"gravity": None, "flicker": 0.5},
            "slots": {"product": "a mug"},
            "cache_hits": ["boundary"],
        }
    )
    assert len(store.keys(PARTS)) == 2 and not store.exists(MANIFEST)  # written as they finish
    manifest.record({"id": "a", "row": 0, "status": "completed", "cache_hits": []})
    assert {k: v["status"] for k, v in manifest.load().items()} == {"a": "completed", "b": "completed"}

    table = manifest.compact(order=["b", "a"])
    assert table.column("id").to_pylist() == ["b", "a"] and store.keys(PARTS) == []
    b = manifest_rows(tmp_path)["b"]
    assert dict(b["physics_subscores"]) == {"gravity": None, "flicker": 0.5} and b["cache_hits"] == ["boundary"]
    manifest.record({"id": "c", "row": 2, "status": "failed", "cache_hits": []})  # parts on top of a manifest
    assert set(manifest.load()) == {"a", "b", "c"}


def test_manifest_reads_one_written_before_a_column_existed(tmp_path):
    store = OutputStore(str(tmp_path))
    old = pa.table({"id": ["a"], "row": [0], "status": ["completed"], "physics_score": [0.9]})
    store.write(MANIFEST, _to_bytes(old))
    manifest = Manifest(store)
    manifest.record(
        {
            "id": "b",
            "row": 1,
            "status": "completed",
            "physics_dynamics": 0.4,
            "physics_violations": [{"kind": "vanish", "frames": [12, 13], "track": 0}],
        }
    )
    rows = manifest.load()
    assert rows["a"]["physics_score"] == 0.9 and rows["a"]["physics_violations"] is None
    assert rows["b"]["physics_violations"] == [{"kind": "vanish", "frames": [12, 13], "track": 0}]


# -- the in-process engine ------------------------------------------------------------------


def test_local_engine_run_rerun_and_changed_row(settings, tmp_path):
    rows_path = write_table(VALID + BAD, tmp_path / "p.jsonl")
    out = tmp_path / "out"
    engine = LocalEngine(settings)
    lines: list[str] = []

    def run():  # input and output as pyarrow.fs URIs, as object storage would be given
        lines.clear()
        rows, _ = read_table(f"file://{rows_path}")
        return asyncio.run(BatchRun(rows, engine, OutputStore(f"file://{out}"), log=lines.append).run())

    first = run()
    assert (first["completed"], first["failed"], first["made"]) == (4, 2, 4)
    entries = manifest_rows(out)
    assert {k: e["status"] for k, e in entries.items()} == {
        "cat": "completed",
        "ball": "completed",
        "shoe": "completed",
        "mug": "completed",
        "bad-size": "failed",
        "unsafe": "failed",
    }
    assert entries["unsafe"]["error_code"] == "content_policy_violation"
    # Template rows ran together: the second found the first's high-noise phase.
    assert "boundary" in entries["shoe"]["cache_hits"] + entries["mug"]["cache_hits"]
    assert entries["shoe"]["template"] == "product_showcase" and entries["shoe"]["seed"] == 1234
    video = probe_mp4((out / "videos" / "cat.mp4").read_bytes())
    assert (video["width"], video["height"], video["frames"]) == (64, 64, 17)
    assert any("[6/6]" in line and "ETA" in line for line in lines)

    second = run()  # completed rows skipped, failed ones retried
    assert (second["made"], second["skipped"], second["failed"]) == (0, 4, 2)
    assert manifest_rows(out)["cat"]["finished_at"] == entries["cat"]["finished_at"]

    write_table([{**VALID[0], "seed": 2}] + VALID[1:] + BAD, rows_path)  # one row changed
    third = run()
    assert third["made"] == 1 and manifest_rows(out)["cat"]["seed"] == 2


def test_a_row_that_breaks_anything_fails_alone(settings, tmp_path):
    """A non-finite number is a failed row naming its field; a line or slots nested thousands
    deep fail their rows (Python's JSON parser and any recursive walk raise RecursionError on
    them); an engine that raises on a row fails that row; the run goes on either way."""
    deep_slots: dict = {}
    inner = deep_slots
    for _ in range(900):
        inner["a"] = inner = {}
    rows, _ = read_table(
        str(
            write_table(
                [
                    {"id": "huge", "prompt": "a red ball", "seconds": 1e308},
                    {"id": "nan", "prompt": "a red ball", "guidance": "NaN"},
                    {"id": "boom", "prompt": "the engine breaks on this one"},
                    {"id": "fine", "prompt": "a red ball", "steps": 2, "seed": 1},
                    {"id": "deep", "template": "product showcase", "slots": deep_slots},
                ],
                tmp_path / "p.jsonl",
                extra_lines=["[" * 200_000 + "]" * 200_000],
            )
        )
    )
    assert (
        rows[4].error
        == rows[5].error.replace("line 6", "line 5")
        == ("line 5: nested deeper than 32 levels of arrays and objects")
    )

    class Breaks(LocalEngine):
        async def generate(self, fields):
            if "breaks" in fields.get("prompt", ""):
                raise OverflowError("cannot convert float infinity to integer")
            return await super().generate(fields)

    out = tmp_path / "out"
    summary = asyncio.run(BatchRun(rows, Breaks(settings), OutputStore(str(out)), log=lambda _: None).run())
    assert (summary["completed"], summary["failed"]) == (1, 5)
    entries = manifest_rows(out)
    assert [entries[f"row-{i:06d}"]["error"] for i in (4, 5)] == [rows[4].error, rows[5].error]
    assert entries["huge"]["error"].startswith("seconds:") and entries["nan"]["error"].startswith("guidance:")
    assert entries["boom"]["error_code"] == "generation_failed" and "OverflowError" in entries["boom"]["error"]
    assert entries["fine"]["status"] == "completed"


@pytest.fixture(scope="module")
def fast_store(wan22_dir, tmp_path_factory) -> Path:
    """An adapter store with a distilled-style adapter (`fast`: 4 steps, no guidance) and a plain one."""
    from contract.experts import ExpertKind
    from tests.test_adapter_sampling import FAST, describe
    from tests.test_adapters import write_adapter

    root = tmp_path_factory.mktemp("adapters")
    for seed, name in enumerate(("fast", "plain")):
        write_adapter(root, name, wan22_dir, list(ExpertKind), seed, rank=2)
    describe(root, "fast", FAST)
    return root


def test_rows_of_one_adapter_run_together_and_the_manifest_says_how_they_ran(settings, fast_store, tmp_path):
    """A fast adapter's rows (4 steps, unguided) run as a group, a template's among them first (the
    second finds the first's high-noise phase, 2 of the 4 steps), and the manifest records the
    steps, guidance and adapters each row ran with."""
    fast, plain = [{"name": "fast"}], [{"name": "plain"}]
    table = [
        {"id": "fast-ball", "prompt": "a red ball bouncing", "lora": fast, "seed": 1},
        {"id": "plain-box", "prompt": "a blue box sliding", "lora": plain, "steps": 2, "seed": 2},
        {"id": "bare", "prompt": "a green ball rolling", "steps": 2, "seed": 3},
        {"id": "fast-shoe", "template": "product_showcase", "slots": {"product": "a running shoe"}, "lora": fast},
        {"id": "fast-box", "prompt": "a yellow box falling", "lora": fast, "seed": 4},
        {"id": "fast-mug", "template": "product_showcase", "slots": {"product": "a ceramic mug"}, "lora": fast},
    ]
    rows, _ = read_table(str(write_table(table, tmp_path / "p.jsonl")))
    with_store = settings.model_copy(update={"adapters": settings.adapters.model_copy(update={"uri": str(fast_store)})})
    order: list[str] = []

    class Recording(LocalEngine):
        async def generate(self, fields):
            order.append(fields.get("prompt") or fields["slots"]["product"])
            return await super().generate(fields)

    out = tmp_path / "out"
    summary = asyncio.run(BatchRun(rows, Recording(with_store), OutputStore(str(out)), log=lambda _: None).run())
    assert summary["completed"] == 6
    assert order == [
        "a green ball rolling",
        "a running shoe",
        "a ceramic mug",
        "a red ball bouncing",
        "a yellow box falling",
        "a blue box sliding",
    ]
    entries = manifest_rows(out)
    for name in ("fast-ball", "fast-box", "fast-shoe", "fast-mug"):
        entry = entries[name]
        assert (entry["num_inference_steps"], entry["guidance_scale"], entry["guidance_scale_2"]) == (4, 1.0, 1.0)
        assert entry["lora"] == [{"name": "fast", "scale": 1.0}]
    assert "boundary" in entries["fast-mug"]["cache_hits"]  # the template's shared phase, in 4 steps
    assert entries["bare"]["lora"] == [] and entries["plain-box"]["guidance_scale"] > 1


# -- real `ray job submit` against the session's Serve app ----------------------------------


def ray_job(
    serve_app, *args: str, wait: bool = True, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    command = [RAY, "job", "submit", "--address", serve_app.dashboard, "--working-dir", str(REPO)]
    command += ["--runtime-env-json", json.dumps({"env_vars": env})] if env else []
    command += [] if wait else ["--no-wait"]
    command += ["--", "python", "-m", "cluster.batch", *args]
    deadline = time.monotonic() + 120
    while True:
        job = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        # Ray's job agent comes up a little after the cluster does; until then, it says so.
        if "No available agent to submit job" not in job.stderr or time.monotonic() > deadline:
            return job
        time.sleep(2)


def test_ray_job_mixed_file_then_rerun(serve_app, tmp_path):
    source = write_table(VALID + BAD, tmp_path / "prompts.jsonl", extra_lines=["{not json"])
    out = tmp_path / "out"
    job = ray_job(serve_app, "--input", str(source), "--output", str(out))
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "[7/7]" in job.stdout and "ETA" in job.stdout  # what `ray job logs -f` follows

    entries = manifest_rows(out)
    assert [e["status"] for e in entries.values()] == ["completed"] * 4 + ["failed"] * 3
    assert entries["bad-size"]["error_code"] == "invalid_request" and "width" in entries["bad-size"]["error"]
    assert entries["unsafe"]["error_code"] == "content_policy_violation"
    assert entries["row-000006"]["error"].startswith("line 7: not valid JSON")
    for name in ("cat", "ball", "shoe", "mug"):
        entry = entries[name]
        video = probe_mp4(Path(entry["output"]).read_bytes())
        assert (video["width"], video["height"], video["frames"]) == (64, 64, 17)
        assert 0 <= entry["physics_score"] <= 1 and entry["physics_subscores"]
        assert entry["physics_dynamics"] >= 0
        assert all(v["kind"] in VIOLATION_KINDS and len(v["frames"]) == 2 for v in entry["physics_violations"])
        assert entry["model_id"] == "t2v-tiny-wan2.2-a14b" and entry["num_inference_steps"] == 4
        assert entry["seconds_total"] > 0
    assert "boundary" in entries["shoe"]["cache_hits"] + entries["mug"]["cache_hits"]
    assert entries["shoe"]["template"] == entries["mug"]["template"] == "product_showcase"
    assert "completed 4, failed 3" in (out / "summary.txt").read_text()

    mtimes = {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    rerun = ray_job(serve_app, "--input", str(source), "--output", str(out))
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "7 rows: 4 already done, 3 to run" in rerun.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "videos").iterdir()} == mtimes
    again = manifest_rows(out)
    assert [again[k]["finished_at"] for k in ("cat", "mug")] == [entries[k]["finished_at"] for k in ("cat", "mug")]


def test_ray_job_killed_midway_resumes_without_duplicates(serve_app, tmp_path):
    rows = [{"id": f"clip-{i}", "prompt": f"a paper boat number {i} drifting on a pond", "steps": 6} for i in range(6)]
    source = write_table(rows, tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    args = ("--input", str(source), "--output", str(out), "--concurrency", "1")
    submitted = ray_job(serve_app, *args, wait=False)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)

    deadline = time.monotonic() + 300
    while len(list((out / PARTS).glob("*.parquet"))) < 2:  # two rows finished, the rest to come
        assert time.monotonic() < deadline, "no rows finished"
        time.sleep(0.5)
    stop = subprocess.run(
        [RAY, "job", "stop", "--address", serve_app.dashboard, job_id], capture_output=True, text=True, timeout=120
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    status = subprocess.run(
        [RAY, "job", "status", "--address", serve_app.dashboard, job_id], capture_output=True, text=True, timeout=60
    )
    assert "was stopped" in status.stdout + status.stderr
    assert len(Manifest(OutputStore(str(out))).load()) < len(rows)  # killed before the end

    resumed = ray_job(serve_app, *args)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    done_before = int(re.search(r"6 rows: (\d+) already done", resumed.stdout).group(1))
    assert 2 <= done_before < 6
    table = pq.read_table(out / MANIFEST)
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)  # each once, none missing
    assert set(table.column("status").to_pylist()) == {"completed"}
    assert sorted(p.name for p in (out / "videos").glob("*.mp4")) == sorted(f"{r['id']}.mp4" for r in rows)
    assert list((out / PARTS).glob("*.parquet")) == []


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_ray_job_reads_parquet_and_csv(serve_app, tmp_path, fmt):
    source = write_table(VALID[:3] + BAD[:1], tmp_path / f"prompts.{fmt}")
    out = tmp_path / "out"
    job = ray_job(serve_app, "--input", str(source), "--output", str(out))
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    statuses = {k: e["status"] for k, e in manifest_rows(out).items()}
    assert statuses == {"cat": "completed", "ball": "completed", "shoe": "completed", "bad-size": "failed"}
    assert probe_mp4((out / "videos" / "shoe.mp4").read_bytes())["frames"] == 17


# -- the Ray Data engine, by `ray job submit` on the session's cluster -------------------------------


def data_job(
    serve_app, tmp_path: Path, *args: str, wait: bool = True, adapters: Path | None = None
) -> subprocess.CompletedProcess:
    """`ray job submit ... --engine data` on the session's model, with a cache of its own."""
    env = {"T2V_CACHE_DIR": str(tmp_path / "cache"), "T2V_MODEL": str(serve_app.model_dir)}
    env |= {"T2V_ADAPTERS__URI": str(adapters)} if adapters else {}
    return ray_job(serve_app, *args, wait=wait, timeout=900, env=env)


FAST_ROWS = [
    {"id": "fast-shoe", "template": "product_showcase", "slots": {"product": "a shoe"}, "lora": [{"name": "fast"}]},
    {"id": "fast-mug", "template": "product_showcase", "slots": {"product": "a mug"}, "lora": [{"name": "fast"}]},
]


def test_data_engine_mixed_file_then_rerun(serve_app, fast_store, tmp_path):
    """Good rows, template rows, an invalid row, a blocked prompt and a non-JSON line through Ray Data's
    actor pools (chosen because the job's Serve app is not on the cluster): each row ends in the
    manifest once, the template's rows share the high-noise phase, also at a fast adapter's 4
    unguided steps; a rerun with `--engine data` runs only the rows not done."""
    source = write_table(VALID + BAD + FAST_ROWS, tmp_path / "prompts.jsonl", extra_lines=["{not json"])
    out = tmp_path / "out"
    # No Serve app of that name on the cluster: the job runs on the data engine and says why.
    args = ("--input", str(source), "--output", str(out))
    job = data_job(serve_app, tmp_path, *args, "--app", "no-such-app", adapters=fast_store)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "engine: data (no Serve app 'no-such-app' on this Ray cluster)" in job.stdout
    assert "one actor pool per stage" in job.stdout and "[9/9]" in job.stdout
    entries = manifest_rows(out)
    statuses = ["completed"] * 4 + ["failed"] * 2 + ["completed"] * 2 + ["failed"]
    assert [e["status"] for e in entries.values()] == statuses
    fast = [entries["fast-shoe"], entries["fast-mug"]]
    assert [(e["num_inference_steps"], e["guidance_scale"], e["lora"][0]["name"]) for e in fast] == [
        (4, 1.0, "fast")
    ] * 2
    assert "boundary" in fast[0]["cache_hits"] + fast[1]["cache_hits"]
    assert entries["bad-size"]["error_code"] == "invalid_request" and "width" in entries["bad-size"]["error"]
    assert entries["unsafe"]["error_code"] == "content_policy_violation"
    assert entries["row-000008"]["error"].startswith("line 9: not valid JSON")
    for name in ("cat", "ball", "shoe", "mug"):
        entry = entries[name]
        video = probe_mp4(Path(entry["output"]).read_bytes())
        assert (video["width"], video["height"], video["frames"]) == (64, 64, 17)
        assert 0 <= entry["physics_score"] <= 1 and entry["model_id"] == "t2v-tiny-wan2.2-a14b"
        assert entry["seconds_high_noise"] > 0 and entry["seconds_decode"] > 0
    assert "boundary" in entries["shoe"]["cache_hits"] + entries["mug"]["cache_hits"]  # one computed, one read

    # The rows left are the ones no request comes of: refused again in the driver, with no pool started.
    from ray.util.state import list_actors

    def pool_actors() -> int:  # Ray Data names each pool's actor class `MapWorker(<its map>)`
        return sum(a.class_name.startswith("MapWorker(") for a in list_actors(limit=10_000))

    before = pool_actors()
    assert before >= 6  # the first run's: one pool per stage
    rerun = data_job(serve_app, tmp_path, *args, "--engine", "data", adapters=fast_store)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert "9 rows: 6 already done, 3 to run" in rerun.stdout
    assert pool_actors() == before
    assert [e["status"] for e in manifest_rows(out).values()] == statuses


def test_data_engine_killed_midway_resumes_without_duplicates(serve_app, tmp_path):
    rows = [{"id": f"clip-{i}", "prompt": f"a paper boat number {i} drifting on a pond", "steps": 6} for i in range(8)]
    source = write_table(rows, tmp_path / "prompts.jsonl")
    out = tmp_path / "out"
    args = ("--input", str(source), "--output", str(out), "--engine", "data")
    submitted = data_job(serve_app, tmp_path, *args, wait=False)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)
    deadline = time.monotonic() + 400
    while not list((out / PARTS).glob("*.parquet")):  # the first row is in: stop the job
        assert time.monotonic() < deadline, "no rows finished"
        time.sleep(0.2)
    stop = subprocess.run(
        [RAY, "job", "stop", "--address", serve_app.dashboard, job_id], capture_output=True, text=True, timeout=120
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    # Rows move through the pools together: the stop may land after the last one.
    done = len(Manifest(OutputStore(str(out))).load())
    assert 1 <= done <= len(rows)

    resumed = data_job(serve_app, tmp_path, *args)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert int(re.search(r"8 rows: (\d+) already done", resumed.stdout).group(1)) == done  # skipped, not redone
    table = pq.read_table(out / MANIFEST)
    assert sorted(table.column("id").to_pylist()) == sorted(r["id"] for r in rows)  # each once, none missing
    assert set(table.column("status").to_pylist()) == {"completed"}
    assert sorted(p.name for p in (out / "videos").glob("*.mp4")) == sorted(f"{r['id']}.mp4" for r in rows)


def test_the_data_engine_reads_the_table_through_ray_data(serve_app, settings, tmp_path):
    """`read_parquet`, `read_csv` and `read_text` give the rows the in-process reader gives, a folder
    of parts is one table, and an unusable table is an InputError naming it."""
    from cluster.data_engine import DataEngine

    engine = DataEngine(settings)
    rows = VALID + BAD + [{"id": "007", "prompt": "a box sliding down a ramp", "seed": 7}]
    sources = [write_table(rows, tmp_path / f"prompts.{fmt}", ["[1, 2]"]) for fmt in ("jsonl", "parquet", "csv")]
    gz = tmp_path / "prompts.jsonl.gz"
    gz.write_bytes(gzip.compress(sources[0].read_bytes()))

    def shape(table):
        return [(r.index, r.id, r.fields, r.request_hash, r.error) for r in table[0]]

    for source in [*sources, gz]:
        assert shape(engine.read_table(str(source))) == shape(read_table(str(source))), source.name
    by_ray = engine.read_table(str(sources[0]))[0]
    assert by_ray[-2].id == "007" and by_ray[-1].error == "line 8: not a JSON object"

    parts = tmp_path / "parts"
    parts.mkdir()
    write_table(rows[:3], parts / "part-0.parquet")
    write_table(rows[3:], parts / "part-1.parquet")
    assert shape(engine.read_table(f"file://{parts}")) == shape(read_table(str(parts)))
    assert shape(read_table(str(parts))) == shape(read_table(str(sources[1])))
    (parts / "part-2.jsonl").write_text("{not json\n")
    with pytest.raises(InputError, match="one format only"):
        engine.read_table(str(parts))
    with pytest.raises(InputError, match="no such file"):
        engine.read_table(str(tmp_path / "missing.parquet"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match="broken.parquet: cannot read the input"):
        engine.read_table(str(tmp_path / "broken.parquet"))


def test_readme_batch_job_on_a_bare_ray_head(tmp_path):
    """README's `ray job submit` command on a cluster `ray start --head` made, without the Serve app:
    the job says it runs on the data engine and makes every row."""
    from cluster.launch import free_port

    port, dashboard, agent = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "T2V_CACHE_DIR": str(tmp_path / "cache"),
    }
    # --block, in a session of its own: the whole cluster goes with its process group, and no other
    # Ray on this machine (the session's) is touched, as `ray stop` would. Ports of its own: the
    # session's cluster holds the defaults.
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=4", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={agent}",
         "--object-store-memory=200000000",
         "--temp-dir=/tmp/t2v-bare", "--disable-usage-stats"],
        env=env, stdout=(tmp_path / "head.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        source = write_table(VALID[:1] + VALID[2:] + BAD[:1], tmp_path / "prompts.jsonl")
        out = tmp_path / "out"
        command = [RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", str(REPO)]
        command += ["--", "python", "-m", "cluster.batch", "--input", str(source), "--output", str(out)]
        deadline = time.monotonic() + 180
        while True:  # the head's dashboard and job agent come up a few seconds after `ray start`
            job = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if job.returncode == 0 or time.monotonic() > deadline or head.poll() is not None:
                break
            time.sleep(3)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "engine: data (no Serve app 't2v' on this Ray cluster)" in job.stdout
        entries = manifest_rows(out)
        assert {k: e["status"] for k, e in entries.items()} == {
            "cat": "completed", "shoe": "completed", "mug": "completed", "bad-size": "failed"
        }  # fmt: skip
        assert probe_mp4((out / "videos" / "mug.mp4").read_bytes())["frames"] == 17
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
