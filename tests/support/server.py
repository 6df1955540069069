"""The real server as a subprocess on a free port (as `batchd serve` runs it), and
llama-cpp-python's own OpenAI-compatible server for the upstream engine to talk to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.backends import backend_env
from tests.support.lines import batch_line
from tests.support.ports import free_port, wait_for_http

API_KEY = "sk-e2e-test-key"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    base_url: str
    api_key: str
    process: subprocess.Popen[bytes]
    log: Path

    def log_once_it_has(self, text: str, timeout: float = 15) -> str:
        """The server's log once `text` is in it: lines arrive a moment after the request."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log.read_text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never reached the log:\n{log[-3000:]}")
            time.sleep(0.05)
        return log


def spawn_server(data_dir: Path, log: Path, *, port: int, models: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`batchd serve` started, not waited for (a test may kill it while it starts)."""
    env = {**os.environ, "BATCHD_API_KEY": API_KEY, "BATCHD_POLL_SECONDS": "0.1",
           "BATCHD_HEARTBEAT_SECONDS": "0.2", **backend_env(data_dir), **(extra_env or {})}
    args = [sys.executable, "-m", "batchd", "serve", "--port", str(port),
            "--data-dir", str(data_dir)]
    if models is not None:
        args += ["--models", str(models)]
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)


def start_server(data_dir: Path, log: Path, *, models: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> Server:
    """`batchd serve`, once it answers its health check."""
    port = free_port()
    process = spawn_server(data_dir, log, port=port, models=models, extra_env=extra_env)
    base = f"http://127.0.0.1:{port}"
    if wait_for_http(f"{base}/healthz", process=process):
        return Server(base_url=f"{base}/v1", api_key=API_KEY, process=process, log=log)
    process.kill()
    raise RuntimeError(f"server did not start:\n{log.read_text()}")


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def start_llama_cpp_server(log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """llama-cpp-python's own OpenAI-compatible server (not batchd's code) on the default
    model; returns the process and its API root."""
    from batchd.engines.llamacpp_options import default_model_path

    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
             "--port", str(port), "--n_ctx", "2048"], stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    if not wait_for_http(f"{base}/models", process=process):
        process.kill()
        raise RuntimeError(f"llama_cpp.server did not start:\n{log.read_text()}")
    return process, base


def run_instant_batch(base_url: str, api_key: str, folder: Path, n: int) -> list[str]:
    """Uploads n instant-model lines with the SDK, runs them as a batch, waits for it to
    complete and returns the output file's custom_ids in file order."""
    from openai import OpenAI

    with OpenAI(base_url=base_url, api_key=api_key) as client:
        path = folder / "in.jsonl"
        path.write_text("\n".join(batch_line(f"r{i}") for i in range(n)) + "\n")
        with path.open("rb") as file:
            uploaded = client.files.create(file=file, purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
        deadline = time.monotonic() + 60
        while batch.status != "completed" and time.monotonic() < deadline:
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None and batch.request_counts.completed == n
        assert batch.output_file_id is not None
        lines = client.files.content(batch.output_file_id).text.splitlines()
        return [str(json.loads(line)["custom_id"]) for line in lines]
