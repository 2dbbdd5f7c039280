"""The input of a batch run: a prompt table in Parquet, JSONL or CSV, one request per row.

Columns are the fields of `POST /v1/videos` (prompt or template + slots, seed, preset,
size, steps, ...) plus an optional `id`. Files are opened through `pyarrow.fs`, so the
input may be a local path or any URI pyarrow knows (s3://, gs://, hdfs://), a file or a
folder of files of one format (one table, its files in name order); `.gz` and
other compressed files are read as such. A row the reader cannot make sense of (a line
that is not JSON, an unusable id) still becomes a `Row`, carrying its error, so it shows
up in the manifest as failed instead of stopping the run.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from contract import nesting
from contract.request import VideoCreateBody

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # the whole id: fullmatch
FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
}
COMPRESSED = (".gz", ".bz2", ".zst", ".lz4")


def request_columns() -> set[str]:
    """Every name `VideoCreateBody` accepts, aliases included (steps, guidance, ...)."""
    names = set()
    for name, field in VideoCreateBody.model_fields.items():
        names.add(name)
        alias = field.validation_alias
        names.update(getattr(alias, "choices", []) or ([alias] if isinstance(alias, str) else []))
    return names


class InputError(ValueError):
    """The table as a whole is unusable (unreadable, unknown format, duplicate ids)."""


@dataclass
class Row:
    index: int  # 0-based position in the file: the manifest's order
    id: str
    fields: dict  # the request fields as given, nulls dropped
    request_hash: str  # changes when any field changes: a rerun redoes the row
    error: str | None = None  # the row is unusable as read (e.g. a line that is not JSON)

    @property
    def template(self) -> str | None:
        template = self.fields.get("template")
        return template if isinstance(template, str) else None

    @property
    def adapters(self) -> tuple[str, ...]:
        """The names of the adapters the row asks for (as given: a malformed `lora` fails later)."""
        lora = self.fields.get("lora")
        names = (a.get("name") for a in lora if isinstance(a, dict)) if isinstance(lora, list) else ()
        return tuple(sorted(str(n) for n in names if n is not None))

    def request_fields(self) -> dict:
        """The fields to send. A free-form row without a seed gets one derived from its
        content, so a rerun or a resumed run makes the same video (HTTP draws a random one)."""
        fields = dict(self.fields)
        if "seed" not in fields and "template" not in fields:
            fields["seed"] = int(self.request_hash, 16) % 2**31
        return fields


def _clean(value):
    """Arrow's Python values to plain JSON-able ones; missing values (None, NaN) to None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list) and value and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        value = dict(value)  # an Arrow map column (e.g. slots written by pandas or Spark)
    if isinstance(value, dict):  # a struct column has every row's keys: drop the ones unset here
        return {k: v for k, v in value.items() if _clean(v) is not None}
    return value


def _content_hash(fields: dict) -> str:
    """Of the fields as the API reads them, so CSV's "4" and JSON's 4 hash alike (a table
    converted to another format resumes where it stopped)."""
    try:
        fields = VideoCreateBody.model_validate(fields).model_dump(exclude_none=True)
    except ValueError:
        pass  # invalid: the row fails anyway; hash what was given
    text = json.dumps(fields, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def table_format(path: str) -> str:
    """parquet, jsonl or csv, from the file name (compressed files by the name inside)."""
    name = path.lower()
    for suffix in COMPRESSED:
        name = name.removesuffix(suffix)
    kind = FORMATS.get(Path(name).suffix)
    if kind is None:
        raise InputError(f"{path}: unknown input format; use .parquet, .jsonl or .csv (optionally .gz)")
    return kind


def _records(fs: pafs.FileSystem, path: str, kind: str, where: str = "line") -> list[dict | str]:
    """Row dicts in file order; a JSONL line that does not parse stays a string (its error)."""
    if kind == "parquet":
        with fs.open_input_file(path) as f:
            return pq.read_table(f).to_pylist()
    with fs.open_input_stream(path) as f:  # decompresses by extension
        data = f.read()
    if kind == "csv":
        return pacsv.read_csv(pa.BufferReader(data), convert_options=csv_options(data)).to_pylist()
    return json_records(data.decode("utf-8", errors="replace").splitlines(), where)


def json_records(lines: Iterable[str], where: str = "line") -> list[dict | str]:
    """JSONL lines as row dicts; a line that is not a JSON object stays a string: its error,
    naming `where` (e.g. the file) and the line's number."""
    records: list[dict | str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = nesting.loads(line)
        except nesting.TooDeep as e:
            records.append(f"{where} {number}: {e}")
            continue
        except json.JSONDecodeError as e:
            records.append(f"{where} {number}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        records.append(record if isinstance(record, dict) else f"{where} {number}: not a JSON object")
    return records


def csv_options(header: bytes) -> pacsv.ConvertOptions:
    """Every column as text: pydantic converts per row, so one bad cell fails one row, not the
    whole column's type inference (and an id such as 007 stays 007)."""
    names = pacsv.open_csv(pa.BufferReader(header)).schema.names
    return pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True)


def _fields(record: dict, known: set[str]) -> tuple[dict, str | None]:
    fields, error = {}, None
    for name, value in record.items():
        value = _clean(value)
        if name == "id" or name not in known or value is None or value == "":
            continue
        if name == "slots" and isinstance(value, str):  # CSV: a JSON object in the cell
            try:
                value = nesting.loads(value)
            except nesting.TooDeep as e:
                value, error = None, f"slots: {e}"
            except json.JSONDecodeError:
                error = f"slots: must be a JSON object, got {value!r}"
        fields[name] = value
    return fields, error


def locate(uri: str) -> tuple[pafs.FileSystem, list[str], str]:
    """The table's filesystem, its files (the one named, or a folder's, sorted: one order per
    run) and their format. Raises InputError when there is none to read."""
    try:
        if "://" in uri:
            fs, path = pafs.FileSystem.from_uri(uri)
        else:
            fs, path = pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            table_format(path)  # a name no reader takes says so first
            raise InputError(f"{uri}: cannot read the input: no such file or folder")
        files = [path]
        if info.type == pafs.FileType.Directory:
            names = tuple(f"{kind}{packed}" for kind in FORMATS for packed in ("", *COMPRESSED))
            selector = pafs.FileSelector(path, recursive=True)
            files = sorted(e.path for e in fs.get_file_info(selector) if e.is_file and e.path.lower().endswith(names))
            if not files:
                raise InputError(f"{uri}: a folder without .parquet, .jsonl or .csv files")
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{uri}: cannot read the input: {e}") from None
    kinds = {table_format(file) for file in files}
    if len(kinds) > 1:
        raise InputError(f"{uri}: a folder of one format only, found {', '.join(sorted(kinds))} files")
    return fs, files, kinds.pop()


def line_names(files: list[str]):
    """What a JSONL record's error calls its line: `line N`, or `<file> line N` in a folder."""
    return (lambda file: f"{Path(file).name} line") if len(files) > 1 else (lambda file: "line")


def read_table(uri: str) -> tuple[list[Row], list[str]]:
    """The rows of the table at `uri` (a file, or a folder of files of one format), read in this
    process, and the columns ignored (not request fields). Raises InputError when the table
    itself is unusable."""
    fs, files, kind = locate(uri)
    where = line_names(files)
    try:
        records = [record for file in files for record in _records(fs, file, kind, where(file))]
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{uri}: cannot read the input: {e}") from None
    return rows_from_records(records)


def rows_from_records(records: list[dict | str]) -> tuple[list[Row], list[str]]:
    """Rows of the table's records in file order (a string is an unreadable record: its error),
    and the columns ignored. Raises InputError on duplicate ids."""
    known = request_columns()
    ignored = sorted({name for r in records if isinstance(r, dict) for name in r} - known - {"id"})

    rows: list[Row] = []
    given_ids: dict[str, int] = {}  # id -> row index
    derived_ids: dict[str, int] = {}  # id -> occurrences
    for index, record in enumerate(records):
        if isinstance(record, dict) and nesting.too_deep(record):  # a Parquet or Arrow record
            record = f"row {index + 1}: {nesting.TooDeep()}"
        if isinstance(record, str):  # unreadable line: an id of its position, its error
            rows.append(Row(index, f"row-{index:06d}", {}, _content_hash({"line": record}), error=record))
            continue
        fields, error = _fields(record, known)
        digest = _content_hash(fields)
        given = _clean(record.get("id"))
        if given is None:
            row_id = f"row-{digest[:12]}"
            derived_ids[row_id] = derived_ids.get(row_id, 0) + 1
            if derived_ids[row_id] > 1:  # identical rows: each its own video, told apart by occurrence
                row_id = f"{row_id}-{derived_ids[row_id]}"
        else:
            row_id = str(given)
            if not ID.fullmatch(row_id):
                error = (
                    error
                    or f"id: must be 1-128 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {row_id!r}"
                )
                row_id = f"row-{index:06d}"
            elif row_id in given_ids:
                raise InputError(
                    f"id {row_id!r} appears more than once (rows {given_ids[row_id] + 1} and {index + 1}); ids must be unique"
                )
            else:
                given_ids[row_id] = index
        rows.append(Row(index, row_id, fields, digest, error))
    return rows, ignored
