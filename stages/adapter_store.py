"""LoRA adapters: the store they live in, and the ones loaded into an expert.

An adapter is a folder holding a diffusers-format `pytorch_lora_weights.safetensors`, its
keys prefixed by the pipeline component they go into: `transformer.` (the high-noise
expert), `transformer_2.` (the low-noise expert), or both; an optional `adapter.json`
describes it, and its `"load_into_transformer_2": true` puts one set of `transformer.` weights
into both experts (diffusers' `WanLoraLoaderMixin.load_lora_weights(load_into_transformer_2=True)`).
A folder may instead hold a published pair as lightx2v ships it, `high_noise_model.safetensors`
and `low_noise_model.safetensors`, each for its own expert; and any weights file may be in a
published Wan layout (`diffusion_model.` / `lora_unet_` keys, `lora_down` / `lora_up`, alphas),
read through diffusers' conversion (stages/lora_layouts.py).
It may also say how the adapter is sampled (`steps`, `guidance`, `guidance_2`, `flow_shift`:
`contract.adapters.AdapterSampling`): a distilled few-step pair runs 4 steps without guidance,
and a request naming it gets those wherever it sets nothing itself.
diffusers loads each part with `load_lora_adapter(prefix=...)` and peft does the rest. The store is a local folder or any `pyarrow.fs` URI (settings `adapters.uri`).

`AdapterStore` lists the adapters and checks each against the model's architecture from
the safetensors header alone, so a request naming one that cannot fit is refused before
any compute. `ExpertAdapters` keeps up to `adapters.max_loaded` of them in one expert's
transformer (least recently used unloaded first) and lets one set at a time be active:
requests with the same adapters and scales run together; others take turns.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import struct
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow.fs as pafs
from pydantic import ValidationError

from contract import nesting
from contract.adapters import ADAPTER_NAME, SAMPLING_FIELDS, AdapterRef, AdapterSampling
from contract.errors import FieldError
from contract.experts import ExpertKind
from contract.settings import Settings
from monitoring.metrics import metrics
from stages.checkpoint import Checkpoint
from stages.lora_layouts import PAIR_FILES, header_shapes, retarget, to_diffusers

WEIGHTS_FILE = "pytorch_lora_weights.safetensors"
DESCRIPTION_FILE = "adapter.json"
# Trained on the default model's world by `t2v model train-lora` (README, "LoRA adapters").
TEST_ADAPTERS_DIR = Path(__file__).parent / "weights" / "test-adapters"
_LORA_PARTS = (".lora_A.weight", ".lora_B.weight")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    revision: str  # changes whenever the weights file does
    experts: tuple[str, ...]  # stage names of the experts it holds weights for
    rank: int
    description: str = ""
    problem: str | None = None  # why it cannot be used with this model; None: it fits
    shared: bool = False  # adapter.json's load_into_transformer_2: its transformer. weights in both experts
    sampling: AdapterSampling | None = None  # adapter.json's steps, guidance, guidance_2, flow_shift
    pair: bool = False  # published as a pair of files, one per expert (PAIR_FILES)

    def prefix(self, kind: ExpertKind) -> str:
        """The key prefix of `kind`'s weights in its file (in diffusers' layout)."""
        return ExpertKind.HIGH_NOISE.subfolder if self.shared or self.pair else kind.subfolder

    def file(self, kind: ExpertKind) -> str:
        """The file holding `kind`'s weights."""
        return PAIR_FILES[kind] if self.pair else WEIGHTS_FILE

    def public(self) -> dict:
        return {
            "id": self.name,
            "object": "adapter",
            "experts": list(self.experts),
            "rank": self.rank,
            "revision": self.revision,
            "description": self.description,
            "compatible": self.problem is None,
            **({"sampling": self.sampling.model_dump(exclude_none=True)} if self.sampling else {}),
            **({"problem": self.problem} if self.problem else {}),
        }


def _data_reader(f) -> Callable[[int, int], bytes]:
    """read(start, end): bytes of an open safetensors file's data section (after its header)."""
    f.seek(0)
    (length,) = struct.unpack("<Q", f.read(8))

    def read(start: int, end: int) -> bytes:
        f.seek(8 + length + start)
        return f.read(end - start)

    return read


def _linear_shapes(checkpoint: Checkpoint, kind: ExpertKind) -> dict[str, tuple[int, int]]:
    """module name -> (in_features, out_features) of every Linear of an expert, from its config
    alone: the model is built on the meta device, so no weights are read or allocated."""
    import torch

    config = json.loads((checkpoint.path / kind.subfolder / "config.json").read_text())
    with torch.device("meta"):
        model = checkpoint._class_of(kind.subfolder).from_config(config)
    return {
        name: (module.in_features, module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


class AdapterStore:
    def __init__(self, uri: str | Path, checkpoint: Checkpoint, listing_seconds: float = 10):
        uri = str(uri)
        if "://" not in uri:
            uri = "file://" + str(Path(uri).expanduser().resolve())
        self.fs, self.root = pafs.FileSystem.from_uri(uri)
        self.uri = uri
        self.checkpoint = checkpoint
        self.listing_seconds = listing_seconds
        self._listing: tuple[float, dict[str, AdapterInfo]] | None = None
        self._refreshing = False
        self._lock = threading.Lock()
        # (name, revision) -> (its adapter.json, its description): a listing reads only what changed
        self._described: dict[tuple[str, str], tuple[dict | None, AdapterInfo]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, checkpoint: Checkpoint | None = None) -> AdapterStore:
        checkpoint = checkpoint or Checkpoint.from_settings(settings)
        return cls(settings.adapters.uri or TEST_ADAPTERS_DIR, checkpoint, settings.adapters.listing_seconds)

    @cached_property
    def _experts(self) -> dict[str, tuple[ExpertKind, dict[str, tuple[int, int]]]]:
        """key prefix -> (expert, its Linear shapes) for the experts this checkpoint has."""
        kinds = [k for k in ExpertKind if k is ExpertKind.HIGH_NOISE or self.checkpoint.has_low_noise_expert]
        return {f"{k.subfolder}.": (k, _linear_shapes(self.checkpoint, k)) for k in kinds}

    # -- listing -----------------------------------------------------------------------------

    def listing(self) -> dict[str, AdapterInfo]:
        """Every adapter in the store by name. Only the first call reads the store; after that the
        listing answers at once and, when older than `listing_seconds`, is read again on a
        thread of its own: a request never waits on an object store's round trips."""
        with self._lock:
            if self._listing is None:
                try:
                    self._listing = (time.monotonic(), self._read_listing())
                except OSError as error:
                    logger.warning("adapter store %s cannot be listed: %s", self.uri, error)
                    return {}
            elif time.monotonic() - self._listing[0] > self.listing_seconds and not self._refreshing:
                self._refreshing = True
                threading.Thread(target=self._refresh, name="adapter-listing", daemon=True).start()
            return self._listing[1]

    def _refresh(self) -> None:
        listing = None
        try:
            listing = self._read_listing()
        except OSError as error:  # the store is down: the last listing stands until it is back
            logger.warning("adapter store %s cannot be listed, keeping the last listing: %s", self.uri, error)
        finally:
            with self._lock:
                self._refreshing = False
                if listing is not None:
                    self._listing = (time.monotonic(), listing)

    def _read_listing(self) -> dict[str, AdapterInfo]:
        """OSError when the store cannot be listed."""
        folders = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        found = {}
        for folder in sorted(folders, key=lambda f: f.base_name):
            if folder.type == pafs.FileType.Directory and not folder.base_name.startswith("."):
                try:
                    info = self._describe(folder.base_name)
                except Exception as error:  # one bad folder must not take the listing (and every request) down
                    logger.warning("adapter store: folder %s cannot be read: %r", folder.base_name, error)
                    info = AdapterInfo(folder.base_name, "", (), 0, "", "its files cannot be read")
                if info is not None:
                    found[info.name] = info
        return found

    def _weight_files(self, name: str) -> dict[str, pafs.FileInfo]:
        """The folder's weights: its diffusers file, else the published pair's files that are there."""
        names = [WEIGHTS_FILE, *PAIR_FILES.values()]
        infos = self.fs.get_file_info([f"{self.root}/{name}/{file}" for file in names])
        found = {file: info for file, info in zip(names, infos, strict=True) if info.type == pafs.FileType.File}
        return {WEIGHTS_FILE: found[WEIGHTS_FILE]} if WEIGHTS_FILE in found else found

    def _describe(self, name: str) -> AdapterInfo | None:
        """The adapter in folder `name`, or None when the folder holds no weights file. A problem
        names what is wrong in the folder's own terms: never a path, a bucket or a raw error."""
        files = self._weight_files(name)
        if not files:
            return None  # not an adapter folder
        stamp = ":".join(f"{file}:{info.size}:{info.mtime_ns}" for file, info in sorted(files.items()))
        revision = hashlib.sha256(f"{name}:{stamp}".encode()).hexdigest()[:16]
        about = self._about(name)
        known = self._described.get((name, revision))
        if known is not None and known[0] == about:  # unchanged since the last listing: no header read again
            return known[1]
        info = self._describe_files(name, revision, files, about)
        self._described = {key: v for key, v in self._described.items() if key[0] != name}  # its older revisions
        self._described[(name, revision)] = (about, info)
        return info

    def _describe_files(
        self, name: str, revision: str, files: dict[str, pafs.FileInfo], about: dict | None
    ) -> AdapterInfo:
        """What `_describe` says of a folder whose weight files or adapter.json changed."""

        def refused(problem: str, description: str = "") -> AdapterInfo:
            return AdapterInfo(name, revision, (), 0, description, problem)

        if not re.match(ADAPTER_NAME, name):
            return refused(f"folder name {name!r} is not an adapter name")
        if about is None:
            return refused(f"its {DESCRIPTION_FILE} is not a readable JSON object")
        description = str(about.get("description", ""))
        # diffusers' `load_into_transformer_2`: one set of `transformer.` weights for both experts
        shared = about.get("load_into_transformer_2") is True
        try:
            given = {k: about[k] for k in SAMPLING_FIELDS if k in about}
            sampling = AdapterSampling.model_validate(given) if given else None
        except ValidationError as error:
            first = error.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            return refused(f"its {DESCRIPTION_FILE} sets {field}: {first['msg'].lower()}", description)
        pair = WEIGHTS_FILE not in files
        if pair and shared:
            return refused("it is a pair of files, one per expert, and asks to load one into both")
        shapes = {}
        for file in files:
            try:
                header = self._header(name, file)
            except (OSError, ValueError) as error:
                logger.warning("adapter store: %s/%s unreadable: %r", name, file, error)
                return refused(f"unreadable {file} (empty, cut short or not safetensors)", description)
            try:
                with self.fs.open_input_file(f"{self.root}/{name}/{file}") as f:
                    keys = header_shapes(header, _data_reader(f))
            except (OSError, ValueError) as error:
                return refused(f"{file}: {error}", description)
            if pair:
                keys = retarget(keys, next(kind for kind, own in PAIR_FILES.items() if own == file))
            shapes |= keys
        experts, rank, problem = self._check({key: {"shape": shape} for key, shape in shapes.items()}, shared)
        return AdapterInfo(name, revision, experts, rank, description, problem, shared, sampling, pair)

    def _about(self, name: str) -> dict | None:
        """The folder's adapter.json ({} when there is none); None when it cannot be read as an object."""
        path = f"{self.root}/{name}/{DESCRIPTION_FILE}"
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return {}
        try:
            with self.fs.open_input_stream(path) as f:  # a folder of that name raises here
                about = nesting.loads(f.read(2**20))
        except (OSError, ValueError):
            return None
        return about if isinstance(about, dict) else None

    def _header(self, name: str, file: str = WEIGHTS_FILE) -> dict[str, dict]:
        """The safetensors header: tensor name -> {dtype, shape, data_offsets}; no tensor is read.
        ValueError when it is not one: too short, not a JSON object of objects, shapes not sizes."""
        with self.fs.open_input_file(f"{self.root}/{name}/{file}") as f:
            file_size, size = f.size(), f.read(8)
            if len(size) < 8:
                raise ValueError("shorter than a safetensors header")
            (length,) = struct.unpack("<Q", size)
            if length > 100 * 2**20:
                raise ValueError(f"a {length}-byte header is not a safetensors file's")
            data = f.read(length)
        if len(data) < length:
            raise ValueError("the header is cut short")
        header = nesting.loads(data)  # ValueError (TooDeep too) when it is not JSON
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        header.pop("__metadata__", None)
        end = 0
        for tensor in header.values():
            shape = tensor.get("shape") if isinstance(tensor, dict) else None
            if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
                raise ValueError("a tensor entry has no shape of sizes")
            offsets = tensor.get("data_offsets")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
                raise ValueError("a tensor entry has no data offsets")
            end = max(end, offsets[1])
        if 8 + length + end != file_size:  # a copy still in progress, or cut short
            raise ValueError("the tensors' data is cut short or followed by more")
        return header

    def _check(self, header: dict[str, dict], shared: bool = False) -> tuple[tuple[str, ...], int, str | None]:
        """(experts it changes, rank, the first reason it does not fit this model or None).
        `shared`: its `transformer.` weights go into the low-noise expert too."""
        low = ExpertKind.LOW_NOISE
        experts, ranks = set(), {}  # ranks: the layer's key without its part -> {part: rank}
        for key, tensor in header.items():
            prefix = next((p for p in self._experts if key.startswith(p)), None)
            if prefix is None:
                if key.split(".", 1)[0] == low.subfolder:
                    return (), 0, "it holds low-noise expert (transformer_2) weights; this model has one transformer"
                return (), 0, f"{key!r} is not a weight of the experts ({', '.join(p[:-1] for p in self._experts)})"
            kind = self._experts[prefix][0]
            if shared and kind is low:
                return (), 0, "it holds transformer_2 weights and asks to load its transformer ones there too"
            part = next((p for p in _LORA_PARTS if key.endswith(p)), None)
            if part is None:
                continue  # alphas, DoRA magnitudes: peft checks them when loading
            targets = [kind] + ([low] if shared and f"{low.subfolder}." in self._experts else [])
            for target in targets:
                if (problem := self._fits(key, prefix, part, tensor["shape"], target)) is not None:
                    return (), 0, problem
                experts.add(target.stage)
            shape = tensor["shape"]
            ranks.setdefault(key[: -len(part)], {})[part] = shape[0] if part == ".lora_A.weight" else shape[1]
        for layer, parts in ranks.items():
            if len(set(parts.values())) > 1:
                return (), 0, f"{layer!r}: lora_A has rank {parts[_LORA_PARTS[0]]}, lora_B rank {parts[_LORA_PARTS[1]]}"
        if not experts:
            return (), 0, "it holds no LoRA weights"
        order = [k.stage for k in ExpertKind if k.stage in experts]
        return tuple(order), max(r for parts in ranks.values() for r in parts.values()), None

    def _fits(self, key: str, prefix: str, part: str, shape: list[int], kind: ExpertKind) -> str | None:
        """Why the LoRA matrix `key` cannot go into `kind`'s expert; None when it fits."""
        linears = self._experts[f"{kind.subfolder}."][1]
        module = key[len(prefix) : -len(part)]
        if module not in linears:
            return f"{key!r}: this model's {kind.subfolder} has no layer {module!r} (another architecture?)"
        inputs, outputs = linears[module]
        a = part == ".lora_A.weight"
        rank = (shape[0] if a else shape[-1]) if shape else 0
        expected = (rank, inputs) if a else (outputs, rank)
        if len(shape) != 2 or rank < 1 or tuple(shape) != expected:
            return (
                f"{key!r} has shape {shape}; {kind.subfolder}.{module} takes {inputs} inputs and gives "
                f"{outputs} outputs (an adapter for another architecture)"
            )
        return None

    # -- what requests and experts use --------------------------------------------------------

    def resolve(self, adapters: list[AdapterRef]) -> list[AdapterRef]:
        """The request's adapters with their revision and experts; FieldError names the first
        unknown one, or one that does not fit this model."""
        known = self.listing()
        resolved = []
        for i, adapter in enumerate(adapters):
            info = known.get(adapter.name)
            if info is None:
                names = ", ".join(sorted(known)) or "none"
                raise FieldError(
                    f"lora.{i}.name", f"unknown adapter {adapter.name!r}; known: {names}", "adapter_not_found"
                )
            if info.problem is not None:
                raise FieldError(
                    f"lora.{i}.name",
                    f"adapter {adapter.name!r} does not fit model {self.checkpoint.model_id!r}: {info.problem}",
                    "adapter_incompatible",
                )
            server = {"revision": info.revision, "experts": list(info.experts), "sampling": info.sampling}
            resolved.append(adapter.model_copy(update=server))
        return resolved

    def read(self, name: str, file: str = WEIGHTS_FILE) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{name}/{file}") as f:
            return f.read()


class ExpertAdapters:
    """The adapters loaded into one expert's transformer, and which of them is active.

    peft's active adapters and their scales belong to the transformer, not to a request, so
    requests whose adapter set (names and scales) differs take turns: `active(...)` admits a
    request while the active set is its own, and a request waiting for another set stops
    newcomers of the current one from cutting in."""

    def __init__(self, transformer, kind: ExpertKind, store: AdapterStore, max_loaded: int, simulated: bool = False):
        self.transformer, self.kind, self.store = transformer, kind, store
        self.max_loaded = max_loaded
        self.simulated = simulated  # a simulated transformer has no layers to adapt: bookkeeping only
        self.loaded: OrderedDict[str, str] = OrderedDict()  # name -> revision, least recently used first
        self.load_seconds: list[float] = []  # for tests and benchmarks
        self._active: tuple = ()
        self._users = 0
        self._queue: list[tuple[tuple, object]] = []  # (key, ticket) of each waiting caller, in arrival order
        self._cond = threading.Condition()

    @staticmethod
    def _slot(name: str, revision: str) -> str:
        """peft's name for an adapter: a valid attribute name, new for every revision."""
        return "lora_" + hashlib.sha256(f"{name}@{revision}".encode()).hexdigest()[:12]

    @contextmanager
    def active(self, adapters: list[AdapterRef]) -> Iterator[None]:
        """Run the body with exactly `adapters` (at their scales) active in the transformer."""
        key = tuple((a.name, a.revision, a.scale) for a in adapters)
        with self._turn(key):
            if self._active != key or (key and not self._holds(adapters)):
                self._load([(a.name, a.revision) for a in adapters])
                self._activate(adapters)
                self._active = key
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                self._cond.notify_all()

    @contextmanager
    def _turn(self, key: tuple) -> Iterator[None]:
        """Hold the lock once it is `key`'s turn: first come, first served by set. A set may join
        the one running while nobody with another set waits ahead of it; else it waits for the
        running phases to end and for those ahead of it to have had their turn."""
        ticket = (key, object())
        with self._cond:
            self._queue.append(ticket)
            try:
                while True:
                    ahead = self._queue[: self._queue.index(ticket)]
                    if self._users == 0 and not ahead:
                        break
                    if self._users and self._active == key and all(k == key for k, _ in ahead):
                        break
                    self._cond.wait()
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()
            yield

    def load(self, pairs: list[tuple[str, str]]) -> bool:
        """Load (name, revision) pairs not loaded yet (Serve's multiplexed load calls this ahead
        of the phase). True when all were loaded already (a hit)."""
        with self._idle():
            return self._load(pairs)

    def unload(self, names: list[str]) -> None:
        """Unload these adapters (Serve's multiplexed LRU evicted a set they belong to)."""
        with self._idle():
            for name in names:
                if name in self.loaded:
                    self._delete(name)

    @contextmanager
    def _idle(self) -> Iterator[None]:
        """Hold the lock with no phase running: peft adds and removes layers in place, which a
        forward on another thread must not see half done. It takes its turn like a phase."""
        with self._turn(("load",)):
            yield

    # -- under the lock ---------------------------------------------------------------------

    def _holds(self, adapters: list[AdapterRef]) -> bool:
        return all(self.loaded.get(a.name) == a.revision for a in adapters)

    def _load(self, pairs: list[tuple[str, str]]) -> bool:
        hit = True
        for name, revision in pairs:
            if self.loaded.get(name) == revision:
                self.loaded.move_to_end(name)
                continue
            hit = False
            if name in self.loaded:  # another revision: the adapter was replaced in the store
                self._delete(name)
            while len(self.loaded) >= self.max_loaded:
                self._delete(next(n for n in self.loaded if n not in dict(pairs)))
            start = time.perf_counter()
            if not self.simulated:
                self._load_weights(name, revision)
            seconds = time.perf_counter() - start
            self.loaded[name] = revision
            self.load_seconds.append(seconds)
            metrics.inc("adapter_loads", expert=self.kind.metric_label, adapter=name)
            metrics.observe("adapter_load", seconds, expert=self.kind.metric_label)
            logger.info("%s: loaded adapter %s (%s) in %.2f s", self.kind.stage, name, revision, seconds)
        if pairs:
            metrics.inc("adapter_requests", expert=self.kind.metric_label, result="hit" if hit else "load")
        return hit

    def _load_weights(self, name: str, revision: str) -> None:
        from safetensors.torch import load as load_safetensors

        info = self.store.listing().get(name)
        if info is not None and info.revision != revision:
            logger.warning("adapter %s changed since the request was validated: loading the store's", name)
        prefix = info.prefix(self.kind) if info is not None else self.kind.subfolder
        file = info.file(self.kind) if info is not None else WEIGHTS_FILE
        state = to_diffusers(load_safetensors(self.store.read(name, file)))
        with warnings.catch_warnings():  # "multiple adapters in the model": what this class is for
            warnings.filterwarnings("ignore", "Already found a `peft_config`")
            self.transformer.load_lora_adapter(state, prefix=prefix, adapter_name=self._slot(name, revision))

    def _delete(self, name: str) -> None:
        revision = self.loaded.pop(name)
        if self._active and name in {k[0] for k in self._active}:
            self._active = ()  # so the next phase activates its set again
        if not self.simulated:
            with warnings.catch_warnings():  # "was active which is now deleted": the next phase activates its own
                warnings.filterwarnings("ignore", "Adapter .* was active")
                self.transformer.delete_adapters([self._slot(name, revision)])

    def _activate(self, adapters: list[AdapterRef]) -> None:
        if self.simulated or not self.loaded:
            return  # never adapted: the plain transformer, no peft layers in the way
        if not adapters:
            self.transformer.disable_lora()
            return
        self.transformer.enable_lora()
        slots = [self._slot(a.name, a.revision) for a in adapters]
        self.transformer.set_adapters(slots, weights=[a.scale for a in adapters])
