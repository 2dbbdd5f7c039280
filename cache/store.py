"""The latent cache's store: one `diskcache` per level, shared by every replica on a node.

Levels: `embeddings` (text encoder output per text), `boundary` (latent + scheduler state
after the high-noise phase, per template base prompt and settings), `result` (finished
mp4 per identical request). Each level has its own size limit and LRU eviction, so hits,
misses, evictions and bytes are counted per level in one place (`stats`).

Values are plain data (tensors, numbers, strings, bytes, lists, dicts) written with
`torch.save` and read back with `weights_only=True`, which builds no object but those: an
entry cannot run code in the replica that reads it. Each carries a SHA-256 of its payload,
an HMAC-SHA256 with `cache.secret` when one is set (set it when the directory is shared):
a corrupt, truncated or forged entry is detected on read, dropped, counted and recomputed;
never served.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import diskcache

from monitoring.metrics import metrics

logger = logging.getLogger(__name__)

LEVELS = ("embeddings", "boundary", "result")
COUNTERS = ("hits", "misses", "evictions", "corrupt")
_MAGIC = b"T2VC2"


class CorruptEntry(Exception):
    pass


def cache_key(**parts: Any) -> str:
    """A stable key from everything that changes a result (sorted JSON, SHA-256)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _digest(payload: bytes, secret: bytes | None) -> bytes:
    return hmac.digest(secret, payload, "sha256") if secret else hashlib.sha256(payload).digest()


def pack(value: Any, secret: bytes | None = None) -> bytes:
    """Plain data (tensors, numbers, strings, bytes, lists, dicts) -> a checksummed (or signed) entry."""
    import torch  # here, not with the module: the ingress starts without torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    payload = buffer.getvalue()
    return _MAGIC + _digest(payload, secret) + payload


def unpack(raw: bytes, secret: bytes | None = None) -> Any:
    header = len(_MAGIC) + 32
    if not isinstance(raw, bytes) or len(raw) < header or not raw.startswith(_MAGIC):
        raise CorruptEntry("bad header")
    payload = raw[header:]
    if not hmac.compare_digest(_digest(payload, secret), raw[len(_MAGIC) : header]):
        raise CorruptEntry("signature mismatch" if secret else "checksum mismatch")
    import torch

    try:
        return torch.load(io.BytesIO(payload), weights_only=True)
    except Exception as error:  # anything but plain data: refused before it is built
        raise CorruptEntry(f"not plain data: {error}") from None


class LatentCache:
    @classmethod
    def from_settings(cls, settings) -> LatentCache | None:
        """The node's cache, or None when the settings turn it off."""
        c = settings.cache
        if not c.enabled:
            return None
        limits = {"embeddings": c.embeddings_bytes, "boundary": c.boundary_bytes, "result": c.result_bytes}
        secret = c.secret.get_secret_value().encode() if c.secret else None
        return cls(c.directory or settings.cache_dir / "latents", limits, c.lock_seconds, secret)

    def __init__(
        self, directory: str | Path, size_limits: dict[str, int], lock_seconds: float = 600, secret: bytes | None = None
    ):
        self.directory = Path(directory)
        self.lock_seconds = lock_seconds
        self._secret = secret
        # cull_limit=0: we cull after each write ourselves, to count what was evicted.
        self.levels = {
            level: diskcache.Cache(
                self.directory / level,
                size_limit=size_limits[level],
                eviction_policy="least-recently-used",
                cull_limit=0,
            )
            for level in LEVELS
        }
        self.counters = diskcache.Cache(self.directory / "counters")  # process-safe increments
        for level, store in self.levels.items():  # every series exists from the first scrape
            metrics.set("cache_bytes", store.volume(), level=level)
            for name in ("evictions", "corrupt"):
                metrics.zero(name, level=level)
            for result in ("hit", "miss"):
                metrics.zero("cache", level=level, result=result)

    # -- reads and writes ---------------------------------------------------------------

    def get(self, level: str, key: str) -> Any | None:
        value = self._read(level, key)
        self._count(level, "hits" if value is not None else "misses")
        return value

    def put(self, level: str, key: str, value: Any) -> None:
        store = self.levels[level]
        store.set(key, pack(value, self._secret))
        evicted = store.cull()
        if evicted:
            self._count(level, "evictions", evicted)
        metrics.set("cache_bytes", store.volume(), level=level)

    def get_or_compute(self, level: str, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """The cached value, or `compute()` stored; concurrent callers of one key (on any
        replica of this node) compute it once. Returns (value, hit)."""
        value = self._read(level, key)
        if value is None:
            with self._lock(level, key):
                value = self._read(level, key)  # computed by whoever held the lock before us
                if value is None:
                    self._count(level, "misses")
                    value = compute()
                    self.put(level, key, value)
                    return value, False
        self._count(level, "hits")
        return value, True

    @contextmanager
    def _lock(self, level: str, key: str):
        """A row in the level's shared SQLite: it spans processes. The holder refreshes it
        while it computes; if the holder's replica dies, it expires within lock_seconds and
        a waiter computes instead. (diskcache.Lock polls every millisecond; a phase takes
        seconds, so poll gently.)"""
        store, name = self.levels[level], f"lock:{key}"
        while not store.add(name, True, expire=self.lock_seconds):
            time.sleep(0.05)
        released = threading.Event()

        def refresh() -> None:
            while not released.wait(self.lock_seconds / 3):
                store.touch(name, expire=self.lock_seconds)

        refresher = threading.Thread(target=refresh, name=f"cache-lock-{level}", daemon=True)
        refresher.start()
        try:
            yield
        finally:
            released.set()
            refresher.join()
            store.delete(name)

    def _read(self, level: str, key: str) -> Any | None:
        store = self.levels[level]
        raw = store.get(key)
        if raw is None:
            return None
        try:
            return unpack(raw, self._secret)
        except CorruptEntry as error:
            logger.warning("cache %s: dropped entry %s: %s", level, key[:16], error)
            store.delete(key)
            self._count(level, "corrupt")
            return None

    # -- bookkeeping --------------------------------------------------------------------

    def _count(self, level: str, name: str, amount: int = 1) -> None:
        self.counters.incr(f"{level}:{name}", amount)
        if name in ("hits", "misses"):
            metrics.inc("cache", amount, level=level, result=name[:-1] if name == "hits" else "miss")
        else:
            metrics.inc(name, amount, level=level)

    def stats(self) -> dict[str, dict[str, int]]:
        return {
            level: {
                **{name: int(self.counters.get(f"{level}:{name}", 0)) for name in COUNTERS},
                "entries": sum(1 for k in store.iterkeys() if not str(k).startswith("lock:")),
                "bytes": store.volume(),
                "size_limit": int(store.size_limit),
            }
            for level, store in self.levels.items()
        }

    def clear(self) -> None:
        for store in self.levels.values():
            store.clear()
        self.counters.clear()

    def close(self) -> None:
        for store in (*self.levels.values(), self.counters):
            store.close()


class MemoryLRU:
    """A small per-replica LRU in front of the shared store (text embeddings)."""

    def __init__(self, entries: int):
        self.entries = entries
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Any | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
