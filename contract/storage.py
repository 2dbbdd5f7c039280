"""Where job records and videos live: a local directory or any `pyarrow.fs` URI.

Every replica on every node opens the same store, so nothing depends on which ingress
replica took a request.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pyarrow.fs as pafs

TEMP_SUFFIX = ".tmp"  # a write in progress; a SIGKILL may leave one behind


def child_uri(uri: str, key: str) -> str:
    """`key` under `uri`, keeping the URI's query (an object store's endpoint, region...)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{key.lstrip('/')}"))


class OutputStore:
    def __init__(self, uri: str):
        if "://" not in uri:
            uri = "file://" + str(Path(uri).expanduser().resolve())
        self.fs, self.root = pafs.FileSystem.from_uri(uri)
        self.uri = uri
        self.fs.create_dir(self.root, recursive=True)

    def _path(self, key: str) -> str:
        return f"{self.root}/{key}"

    def write(self, key: str, data: bytes) -> None:
        """Atomic where the filesystem allows: readers see the old or the new bytes, never half."""
        path = self._path(key)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):
            tmp = f"{path}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self.fs.move(tmp, path)
        else:  # object stores publish an object only once it is fully written
            with self.fs.open_output_stream(path) as out:
                out.write(data)

    def copy(self, source: str, key: str) -> None:
        """`source`'s bytes under `key` too, within the store (an object store copies server-side:
        nothing passes through this process)."""
        path = self._path(key)
        self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        if isinstance(self.fs, pafs.LocalFileSystem):  # as atomic as `write`
            tmp = f"{path}.{uuid.uuid4().hex}{TEMP_SUFFIX}"
            self.fs.copy_file(self._path(source), tmp)
            self.fs.move(tmp, path)
        else:
            self.fs.copy_file(self._path(source), path)

    def read(self, key: str) -> bytes | None:
        try:
            with self.fs.open_input_stream(self._path(key)) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self.fs.get_file_info(self._path(key)).type == pafs.FileType.File

    def delete(self, key: str) -> None:
        try:
            self.fs.delete_file(self._path(key))
        except FileNotFoundError:
            pass

    def keys(self, prefix: str) -> list[str]:
        """The keys under `prefix`: written ones only, never a write in progress (or cut short)."""
        selector = pafs.FileSelector(self._path(prefix), allow_not_found=True)
        infos = self.fs.get_file_info(selector)
        return [i.path[len(self.root) + 1 :] for i in infos if i.is_file and not i.path.endswith(TEMP_SUFFIX)]

    def location(self, key: str) -> str:
        """Where `key` lives, for people and manifests: a path when local, else its URI."""
        return self.local_path(key) or child_uri(self.uri, key)

    def local_path(self, key: str) -> str | None:
        """A filesystem path for `key` when the store is local (lets HTTP stream the file)."""
        return self._path(key) if isinstance(self.fs, pafs.LocalFileSystem) else None
