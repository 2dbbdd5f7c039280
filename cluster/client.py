"""A small Python client of the HTTP API (the `openai` SDK works too)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


class T2VError(RuntimeError):
    def __init__(self, status: int, body: Any):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        super().__init__(f"HTTP {status}: {error.get('message', body)}")
        self.status, self.body = status, body


class T2VClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 600):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise T2VError(response.status_code, body)
        return response

    def create(self, prompt: str | None, **fields) -> dict:
        """Queue a job (a prompt, or template= and slots=): returns its record."""
        body = {**({"prompt": prompt} if prompt is not None else {}), **fields}
        return self._call("POST", "/v1/videos", json=body).json()

    def retrieve(self, video_id: str) -> dict:
        return self._call("GET", f"/v1/videos/{video_id}").json()

    def list(self, limit: int = 20, after: str | None = None, order: str = "desc") -> dict:
        params = {"limit": limit, "order": order, **({"after": after} if after else {})}
        return self._call("GET", "/v1/videos", params=params).json()

    def delete(self, video_id: str) -> dict:
        return self._call("DELETE", f"/v1/videos/{video_id}").json()

    def content(self, video_id: str) -> bytes:
        return self._call("GET", f"/v1/videos/{video_id}/content").content

    def wait(
        self, video_id: str, timeout: float = 600, poll: float = 0.25, on_progress: Callable[[dict], None] | None = None
    ) -> dict:
        """Poll until the job leaves queued / in_progress; returns the final record."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.retrieve(video_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] not in ("queued", "in_progress"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"{video_id} still {job['status']} after {timeout}s")
            time.sleep(poll)

    def generate(self, prompt: str | None, **fields) -> bytes:
        """One request, the mp4 in the response (POST /v1/videos/sync)."""
        body = {**({"prompt": prompt} if prompt is not None else {}), **fields}
        return self._call("POST", "/v1/videos/sync", json=body).content
