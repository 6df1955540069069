"""The openai SDK's own chunked-upload helper against the real server, on a file of several
hundred MB: the File arrives whole, and the server's memory stays flat."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from tests.support.lines import INSTANT_MODELS
from tests.support.server import Server, start_server, stop_server

SIZE = 300 * 1024 * 1024


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("uploads")
    (root / "models.yaml").write_text(INSTANT_MODELS)
    server = start_server(root / "data", root / "server.log", models=root / "models.yaml")
    yield server
    stop_server(server)


def test_the_sdk_chunked_upload_of_300_mb(server: Server, tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("wb") as out:
        for _ in range(SIZE // (4 * 1024 * 1024)):
            piece = os.urandom(4 * 1024 * 1024)
            digest.update(piece)
            out.write(piece)
    with OpenAI(base_url=server.base_url, api_key=server.api_key, timeout=300) as client:
        before = memory_mb(server.process.pid)
        upload = client.uploads.upload_file_chunked(
            file=path, mime_type="application/octet-stream", purpose="user_data",
            md5=digest.hexdigest())
        grew = memory_mb(server.process.pid, "VmHWM") - before
        assert upload.status == "completed" and upload.file is not None
        assert upload.file.bytes == SIZE and upload.file.filename == "big.bin"
        check = hashlib.md5(usedforsecurity=False)
        with httpx.stream("GET", f"{server.base_url}/files/{upload.file.id}/content", timeout=300,
                          headers={"Authorization": f"Bearer {server.api_key}"}) as response:
            for piece in response.iter_bytes():
                check.update(piece)
        assert check.hexdigest() == digest.hexdigest()
        assert grew < 120, f"server memory grew by {grew:.0f} MB for a {SIZE >> 20} MB upload"
