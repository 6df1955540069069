"""A small, synchronous client of batchd's public API (`/v1`), for the command line.

It speaks only what any key may use, with that key: nothing more privileged than the SDKs.
Every failure is a `ClientError` whose message is one line a person can act on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import httpx

Progress = Callable[[int], None]  # called with the number of bytes just moved


class ClientError(Exception):
    """One line for the terminal; `status` is the HTTP status when the server answered."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def resolve(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """The server and key: flags first, then OPENAI_BASE_URL and OPENAI_API_KEY (what
    `batchd serve` prints)."""
    base = base_url or os.environ.get("OPENAI_BASE_URL") or "http://127.0.0.1:8000/v1"
    key = api_key or os.environ.get("OPENAI_API_KEY")
    if not key:
        raise ClientError("No API key: pass --api-key or set OPENAI_API_KEY (batchd serve "
                          "prints one on its first start; `batchd keys create` makes more).")
    return base.rstrip("/"), key


class _CountingReader:
    """A file that reports how much of it has been read (the upload's progress)."""

    def __init__(self, file: BinaryIO, progress: Progress | None) -> None:
        self._file, self._progress = file, progress

    def read(self, size: int = -1) -> bytes:
        data = self._file.read(size)
        if self._progress is not None and data:
            self._progress(len(data))
        return data


class BatchdClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 60.0) -> None:
        self.base_url = base_url
        self._http = httpx.Client(base_url=base_url, timeout=timeout,
                                  headers={"Authorization": f"Bearer {api_key}"})

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BatchdClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing ---------------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ClientError(f"Cannot reach batchd at {self.base_url}: {exc or type(exc).__name__}"
                              ) from exc
        _raise_for_error(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        body = self._request(method, path, **kwargs).json()
        assert isinstance(body, dict)
        return body

    # --- files ------------------------------------------------------------------------------

    def upload(self, path: Path, *, purpose: str = "batch",
               progress: Progress | None = None) -> dict[str, Any]:
        with path.open("rb") as file:
            reader = _CountingReader(file, progress)
            return self._json("POST", "/files", data={"purpose": purpose},
                              files={"file": (path.name, reader)},
                              timeout=None)

    def files(self, *, limit: int = 20, after: str | None = None,
              purpose: str | None = None) -> dict[str, Any]:
        params = {"limit": limit, "after": after, "purpose": purpose}
        return self._json("GET", "/files", params={k: v for k, v in params.items() if v})

    def file(self, file_id: str) -> dict[str, Any]:
        return self._json("GET", f"/files/{file_id}")

    def delete_file(self, file_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/files/{file_id}")

    def estimate(self, file_id: str, *, endpoint: str | None = None) -> dict[str, Any]:
        body = {"endpoint": endpoint} if endpoint else {}
        return self._json("POST", f"/files/{file_id}/estimate", json=body, timeout=None)

    def download(self, file_id: str, dest: Path, *, progress: Progress | None = None) -> int:
        """Stream a file's content to `dest` (written whole or not at all); its size."""
        partial = dest.with_name(dest.name + ".partial")
        size = 0
        try:
            with self._http.stream("GET", f"/files/{file_id}/content", timeout=None) as response:
                if response.is_error:
                    response.read()
                    _raise_for_error(response)
                with partial.open("wb") as out:
                    for piece in response.iter_bytes():
                        out.write(piece)
                        size += len(piece)
                        if progress is not None:
                            progress(len(piece))
            partial.replace(dest)
        except httpx.TransportError as exc:
            raise ClientError(f"Cannot reach batchd at {self.base_url}: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
        return size

    # --- batches ----------------------------------------------------------------------------

    def create_batch(self, *, input_file_id: str, endpoint: str, window: str,
                     metadata: dict[str, str] | None) -> dict[str, Any]:
        body: dict[str, Any] = {"input_file_id": input_file_id, "endpoint": endpoint,
                                "completion_window": window}
        if metadata:
            body["metadata"] = metadata
        return self._json("POST", "/batches", json=body)

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self._json("GET", f"/batches/{batch_id}")

    def batches(self, *, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        return self._json("GET", "/batches", params=params)

    def all_batches(self) -> Iterator[dict[str, Any]]:
        after = None
        while True:
            page = self.batches(limit=100, after=after)
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            after = page["data"][-1]["id"]

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._json("POST", f"/batches/{batch_id}/cancel")

    def usage_pages(self, kind: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every page of the Usage API (`kind`: completions or embeddings) for `params`."""
        page: str | None = None
        while True:
            answer = self._json("GET", f"/organization/usage/{kind}",
                                params={**params, **({"page": page} if page else {})})
            yield answer
            page = answer.get("next_page")
            if not answer.get("has_more") or not page:
                return

    def retry(self, batch_id: str) -> dict[str, Any]:
        """A new batch of the lines that failed (a batchd extension)."""
        return self._json("POST", f"/batches/{batch_id}/retry")


def _raise_for_error(response: httpx.Response) -> None:
    if not response.is_error:
        return
    try:
        error = response.json()["error"]
        message = str(error.get("message") or response.reason_phrase)
        code = error.get("code")
    except (ValueError, KeyError, TypeError, AttributeError):
        message, code = response.text.strip()[:200] or response.reason_phrase, None
    suffix = f" ({code})" if code else ""
    raise ClientError(f"{response.status_code}: {message}{suffix}", status=response.status_code)
