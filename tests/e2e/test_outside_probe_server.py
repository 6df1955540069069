"""The outside probe's findings that need a real server process: sampling parameters on the real
model (real time and in a batch), abandoned generations, connection timeouts, and what reaches
the log."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.support.lines import INSTANT_MODELS
from tests.support.server import Server, start_server, stop_server

MODEL = "SmolLM2-135M-Instruct"
# Every sampling parameter README documents for the llama.cpp engine, each on its own.
SAMPLING: dict[str, dict[str, Any]] = {
    "max_tokens": {"max_tokens": 3},
    "max_completion_tokens": {"max_completion_tokens": 3},
    "temperature": {"temperature": 1.3, "max_tokens": 4},
    "top_p": {"top_p": 0.5, "temperature": 0.8, "max_tokens": 4},
    "stop": {"stop": ["\n", ""], "max_tokens": 4},
    "seed": {"seed": 7, "temperature": 1.0, "max_tokens": 4},
    "presence_penalty": {"presence_penalty": 1.5, "max_tokens": 4},
    "frequency_penalty": {"frequency_penalty": -1.0, "max_tokens": 4},
    "n": {"n": 3, "max_tokens": 3},
    "logprobs": {"logprobs": True, "top_logprobs": 2, "max_tokens": 3},
}


def messages(text: str = "Name three fruits.") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture
def client(real_server: Server) -> Iterator[OpenAI]:
    with OpenAI(base_url=real_server.base_url, api_key=real_server.api_key,
                max_retries=0) as client:
        yield client


@pytest.mark.parametrize("name", SAMPLING)
def test_every_documented_sampling_parameter_in_real_time(client: OpenAI, name: str) -> None:
    params = SAMPLING[name]
    completion = client.chat.completions.create(model=MODEL, messages=messages(),  # type: ignore[arg-type]
                                                **params)
    assert len(completion.choices) == params.get("n", 1)
    assert all(c.finish_reason in ("stop", "length") for c in completion.choices)
    assert completion.usage is not None and completion.usage.completion_tokens >= 1
    if name == "logprobs":
        content = completion.choices[0].logprobs.content  # type: ignore[union-attr]
        assert content and len(content[0].top_logprobs) == 2
    stream = client.chat.completions.create(model=MODEL, messages=messages(),  # type: ignore[arg-type]
                                            stream=True, **params)
    chunks = list(stream)
    assert not any(getattr(c, "error", None) for c in chunks)
    assert chunks[-1].choices[-1].finish_reason in ("stop", "length")
    if name == "logprobs":  # streamed too, each token once, as the whole reply has them
        streamed = [t for c in chunks for ch in c.choices if ch.logprobs and ch.logprobs.content
                    for t in ch.logprobs.content]
        assert 0 < len(streamed) <= params["max_tokens"]
        assert all(len(t.top_logprobs) == 2 for t in streamed)


def test_every_documented_sampling_parameter_in_a_batch(client: OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "sampling.jsonl"
    path.write_text("".join(json.dumps({
        "custom_id": name, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": MODEL, "messages": messages(), **params}}) + "\n"
        for name, params in SAMPLING.items()))
    with path.open("rb") as file:
        uploaded = client.files.create(file=file, purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    deadline = time.monotonic() + 120
    while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed", batch
    assert batch.request_counts is not None and batch.request_counts.failed == 0
    assert batch.output_file_id is not None
    lines = [json.loads(line) for line in
             client.files.content(batch.output_file_id).text.splitlines()]
    assert {line["custom_id"] for line in lines} == set(SAMPLING)


def test_max_tokens_beyond_the_context_is_a_400_naming_the_limit(client: OpenAI) -> None:
    response = httpx.post(f"{client.base_url}chat/completions", timeout=30,
                          headers={"Authorization": f"Bearer {client.api_key}"},
                          json={"model": MODEL, "messages": messages(),
                                "max_tokens": 1_000_000_000})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens" and "4096" in error["message"]


def test_abandoned_non_streaming_requests_stop_generating(real_server: Server) -> None:
    """Two heavy requests whose client gives up after a second must not make another
    tenant's small request wait for them (it waited ~7 minutes before)."""
    headers = {"Authorization": f"Bearer {real_server.api_key}"}
    heavy = {"model": MODEL, "messages": messages("Write a very long story."), "n": 16,
             "max_tokens": 1500, "temperature": 1.0}
    for _ in range(2):  # together they would take every slot of the engine for minutes
        abandon(f"{real_server.base_url}/chat/completions", heavy, headers)
    started = time.monotonic()
    small = httpx.post(f"{real_server.base_url}/chat/completions", headers=headers, timeout=120,
                       json={"model": MODEL, "messages": messages(), "max_tokens": 4})
    assert small.status_code == 200
    assert time.monotonic() - started < 15


def abandon(url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
    """Send a request and give up on it after a second. (The key may still hold the previous
    abandoned one for a moment: that is a 429, and the request is sent again.)"""
    for _ in range(20):
        try:
            response = httpx.post(url, json=body, headers=headers, timeout=1.0)
        except httpx.TimeoutException:
            return
        assert response.status_code == 429, response.text
        time.sleep(0.1)
    raise AssertionError("the key's earlier abandoned request was never released")


@pytest.fixture
def instant_server(tmp_path: Path) -> Iterator[Server]:
    models = tmp_path / "models.yaml"
    models.write_text(INSTANT_MODELS)
    server = start_server(tmp_path / "data", tmp_path / "server.log", models=models,
                          extra_env={"BATCHD_HEADER_TIMEOUT_SECONDS": "1",
                                     "BATCHD_BODY_TIMEOUT_SECONDS": "1"})
    yield server
    stop_server(server)


def _connect(server: Server) -> socket.socket:
    host, port = httpx.URL(server.base_url).host, httpx.URL(server.base_url).port
    sock = socket.create_connection((host, port), timeout=5)
    return sock


def _closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before it closed the connection (fails if it stays open)."""
    sock.settimeout(seconds)
    received = b""
    while True:
        piece = sock.recv(65536)
        if not piece:
            return received
        received += piece


@pytest.mark.backend_independent  # the HTTP server's timeouts, before any store is touched
def test_slow_or_half_sent_headers_and_bodies_are_timed_out(instant_server: Server) -> None:
    with _connect(instant_server) as half_headers:
        half_headers.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        assert _closed_within(half_headers, 5) == b""
    with _connect(instant_server) as dribbling:  # a byte at a time, never finishing
        dribbling.sendall(b"GET /v1/mo")
        deadline = time.monotonic() + 5
        with pytest.raises(OSError):
            while time.monotonic() < deadline:
                time.sleep(0.3)
                dribbling.sendall(b"d")
            raise AssertionError("the connection was still open after 5 s")
    with _connect(instant_server) as half_body:
        half_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                          b"Authorization: Bearer " + instant_server.api_key.encode() +
                          b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        answer = _closed_within(half_body, 5)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b'"request_timeout"' in answer
    with _connect(instant_server) as idle:  # nothing sent at all
        assert _closed_within(idle, 5) == b""
    # A normal client is unaffected.
    assert httpx.get(f"{instant_server.base_url}/models", headers={
        "Authorization": f"Bearer {instant_server.api_key}"}).status_code == 200


def _refused(sock: socket.socket) -> bool:
    """A 400 and the connection closed; or, when the server closed on bytes it had not read
    yet, a reset (the kernel's, which may overtake the 400)."""
    try:
        answer = _closed_within(sock, 5)
    except ConnectionResetError:
        return True
    return answer.startswith(b"HTTP/1.1 400")


@pytest.mark.backend_independent  # the HTTP server's bounds, before any store is touched
def test_headers_past_64_kib_are_refused_and_the_connection_closed(
    instant_server: Server,
) -> None:
    auth = b"Authorization: Bearer " + instant_server.api_key.encode() + b"\r\n"
    for name, headers in (("one long header", b"X-Big: " + b"a" * 70_000 + b"\r\n"),
                          ("many short ones", b"".join(b"X-%d: %s\r\n" % (n, b"b" * 90)
                                                       for n in range(800))),
                          ("a long URL", b"")):
        path = b"/v1/models" + (b"?q=" + b"c" * 70_000 if name == "a long URL" else b"")
        with _connect(instant_server) as sock:
            with contextlib.suppress(OSError):  # it may close before all is sent
                sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth + headers
                             + b"\r\n")
            assert _refused(sock), name
    # One header that never ends, sent at once: refused for its bytes, not for its time.
    with _connect(instant_server) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            for _ in range(10):
                sock.sendall(b"e" * 10_000)
        assert _refused(sock)
    # Just under the bound is an ordinary request.
    with _connect(instant_server) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + auth
                     + b"X-Big: " + b"d" * 60_000 + b"\r\n\r\n")
        assert _closed_within(sock, 5).startswith(b"HTTP/1.1 200")


@pytest.mark.backend_independent  # the HTTP server's clocks, before any store is touched
def test_a_pipelined_request_may_send_its_body_slowly(instant_server: Server) -> None:
    """The header clock (1 s here) stops once a request's headers are in, also for a request
    that came pipelined behind another and starts when that one's answer is complete."""
    auth = b"Authorization: Bearer " + instant_server.api_key.encode() + b"\r\n"
    body = json.dumps({"model": "instant-model", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "slowly " * 20}]}).encode()
    with _connect(instant_server) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
                     + b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + auth
                     + b"Content-Type: application/json\r\nConnection: close\r\n"
                     + b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        for start in range(10, len(body), len(body) // 6 + 1):  # 2 s in all, 0.3 s a piece
            time.sleep(0.3)
            sock.sendall(body[start:start + len(body) // 6 + 1])
        answer = _closed_within(sock, 5)
    assert answer.count(b"HTTP/1.1 200") == 2, answer[-400:]
    assert b'"chat.completion"' in answer


def test_credentials_never_reach_the_log(instant_server: Server) -> None:
    key = instant_server.api_key
    for url in (f"{instant_server.base_url}/models?api_key={key}",
                f"{instant_server.base_url}/models?key=bd-abcdefghijklmnop1234",
                f"{instant_server.base_url}/models?x={key}"):
        httpx.get(url)
    httpx.get(f"{instant_server.base_url}/models", headers={"Authorization": f"Bearer {key}"})
    log = instant_server.log_once_it_has("/v1/models?x=")  # the requests were logged
    assert key not in log and "bd-abcdefghijklmnop1234" not in log


def test_a_client_that_disconnects_mid_upload_is_one_log_line(instant_server: Server) -> None:
    with _connect(instant_server) as upload:
        upload.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " +
                       instant_server.api_key.encode() +
                       b"\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                       b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; "
                       b'name="file"; filename="a.jsonl"\r\n\r\n' + b"x" * 1000)
        time.sleep(0.3)
    log = instant_server.log_once_it_has("client disconnected during POST /v1/files")
    assert "Traceback" not in log and "ERROR" not in log
