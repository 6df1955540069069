"""`batchd` as a client of a real server: submit --wait, watch, results, batches, files;
--json for scripts; one-line errors; the live bar drawn in a pseudo-terminal; Ctrl-C detaches."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.lines import INSTANT_MODELS, batch_line
from tests.support.ports import free_port
from tests.support.server import Server, start_server, stop_server

# Slow enough that a batch is still running when the test looks at the bar.
CRAWL_MODEL = """
  - id: crawl-model
    engine: instant
    delay_seconds: 0.5
    concurrency: 4
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("client")
    (root / "models.yaml").write_text(INSTANT_MODELS + CRAWL_MODEL)
    server = start_server(root / "data", root / "server.log", models=root / "models.yaml")
    yield server
    stop_server(server)


def client_env(server: Server, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "OPENAI_"))}
    return {**env, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": server.api_key,
            "COLUMNS": "120", **extra}


def batchd(server: Server, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "batchd", *args], cwd=cwd,
                          env=client_env(server, **env), capture_output=True, text=True,
                          timeout=120)


def write_requests(path: Path, n: int, *, fail_every: int = 0, model: str = "instant-model"
                   ) -> Path:
    path.write_text("".join(
        batch_line(f"r{i}", "FAIL-ME" if fail_every and i % fail_every == 0 else f"q{i}",
                   model=model) + "\n" for i in range(n)))
    return path


def test_submit_wait_downloads_the_results(server: Server, tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 30, fail_every=10)
    run = batchd(server, "submit", str(requests), "--wait", "-o", "out.jsonl", "--errors",
                 "err.jsonl", "--metadata", "project=cli", cwd=tmp_path)
    # Three requests fail on purpose: the batch completes and the command says so (exit 0).
    assert run.returncode == 0, run.stderr
    assert "completed: 27 completed, 3 failed of 30" in run.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    err = [json.loads(line) for line in (tmp_path / "err.jsonl").read_text().splitlines()]
    assert len(out) == 27 and len(err) == 3
    assert {line["custom_id"] for line in out + err} == {f"r{i}" for i in range(30)}
    assert not list(tmp_path.glob("*.partial"))


def test_json_output_is_the_api_objects(server: Server, tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 5)
    created = json.loads(batchd(server, "submit", str(requests), "--json",
                                "--metadata", "k=v", cwd=tmp_path).stdout)
    assert created["object"] == "batch" and created["metadata"] == {"k": "v"}
    finished = json.loads(batchd(server, "watch", created["id"], "--json", "-o", "o.jsonl",
                                 cwd=tmp_path).stdout)
    assert finished["status"] == "completed" and finished["downloaded"]["output"] == "o.jsonl"
    listed = json.loads(batchd(server, "batches", "list", "--json", cwd=tmp_path).stdout)
    assert created["id"] in [b["id"] for b in listed["data"]]
    got = json.loads(batchd(server, "batches", "get", created["id"], "--json",
                            cwd=tmp_path).stdout)
    assert got["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    files = json.loads(batchd(server, "files", "list", "--json", cwd=tmp_path).stdout)
    assert created["input_file_id"] in [f["id"] for f in files["data"]]
    saved = json.loads(batchd(server, "results", created["id"], "--json", "-o", "r.jsonl",
                              cwd=tmp_path).stdout)
    assert saved == {"output": "r.jsonl"}
    assert len((tmp_path / "r.jsonl").read_text().splitlines()) == 5
    deleted = json.loads(batchd(server, "files", "delete", created["input_file_id"], "--json",
                                cwd=tmp_path).stdout)
    assert deleted["deleted"] is True


def test_cancel_and_download_by_command(server: Server, tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 40, model="crawl-model")
    created = json.loads(batchd(server, "submit", str(requests), "--json",
                                cwd=tmp_path).stdout)
    cancelled = batchd(server, "batches", "cancel", created["id"], cwd=tmp_path)
    assert cancelled.returncode == 0 and created["id"] in cancelled.stdout
    download = batchd(server, "files", "download", created["input_file_id"], "-o", "copy.jsonl",
                      cwd=tmp_path)
    assert download.returncode == 0, download.stderr
    assert (tmp_path / "copy.jsonl").read_bytes() == requests.read_bytes()
    # A batch that ends other than completed is exit status 1, in --json mode too.
    watched = batchd(server, "watch", created["id"], "--json", "--no-download", cwd=tmp_path)
    assert watched.returncode == 1 and json.loads(watched.stdout)["status"] == "cancelled"
    # Downloading by the file's own name never replaces a local file without --force.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = batchd(server, "files", "download", created["input_file_id"], cwd=elsewhere)
    assert again.returncode == 0, again.stderr
    assert (elsewhere / "in.jsonl").read_bytes() == requests.read_bytes()
    refused = batchd(server, "files", "download", created["input_file_id"], cwd=elsewhere)
    assert refused.returncode == 1 and "--force" in refused.stderr


def test_names_that_look_like_markup_print_as_they_are(server: Server, tmp_path: Path) -> None:
    odd = write_requests(tmp_path / "x[bold]z].jsonl", 2)
    created = batchd(server, "submit", str(odd), "--metadata", "note=[/x] [red]", "--json",
                     cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    listed = batchd(server, "files", "list", cwd=tmp_path)
    assert listed.returncode == 0 and "x[bold]z].jsonl" in listed.stdout, listed.stderr
    batch_id = json.loads(created.stdout)["id"]
    shown = batchd(server, "batches", "get", batch_id, cwd=tmp_path)
    assert shown.returncode == 0 and "[/x] [red]" in shown.stdout, shown.stderr


@pytest.mark.parametrize(("args", "env", "status", "says"), [
    (["batches", "get", "batch_missing"], {}, 1, "404: No batch found"),
    (["batches", "list"], {"OPENAI_API_KEY": "sk-wrong"}, 1, "401:"),
    (["batches", "list"], {"OPENAI_API_KEY": ""}, 2, "No API key"),
    (["files", "list"], {"OPENAI_BASE_URL": "http://127.0.0.1:{port}/v1"}, 1,
     "Cannot reach batchd"),
    (["results", "batch_missing", "-o", "x"], {}, 1, "404"),
])
def test_errors_are_one_line_and_an_exit_status(
    server: Server, tmp_path: Path, args: list[str], env: dict[str, str], status: int,
    says: str,
) -> None:
    env = {k: v.format(port=free_port()) for k, v in env.items()}
    run = batchd(server, *args, cwd=tmp_path, **env)
    assert run.returncode == status, (run.stdout, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], run.stderr
    assert "Traceback" not in run.stderr


def read_pty(fd: int, process: subprocess.Popen[bytes], until: float) -> str:
    out = b""
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                piece = os.read(fd, 65536)
            except OSError:
                break
            if not piece:
                break
            out += piece
        elif process.poll() is not None:
            break
    return out.decode(errors="replace")


def interruptible() -> None:
    """Ctrl-C's default in the child, whatever this suite inherited: a shell that starts it in
    the background (`make test &`, nohup) ignores SIGINT, the ignore passes down, and Python
    then leaves it ignored, as a program should, so the client would never see the Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.backend_independent  # drawing and Ctrl-C are the client's own
def test_the_live_bar_is_drawn_in_a_terminal_and_ctrl_c_detaches(
    server: Server, tmp_path: Path,
) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 400, model="crawl-model")
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "batchd", "submit", str(requests), "--wait"], cwd=tmp_path,
        env=client_env(server, TERM="xterm-256color", PYTHONFAULTHANDLER="1"), stdin=follower,
        stdout=follower, stderr=follower, preexec_fn=interruptible)
    os.close(follower)
    try:
        seen = read_pty(leader, process, time.monotonic() + 4)
        assert "in_progress" in seen and "━" in seen and "tok/s" in seen, seen
        assert "ETA" in seen
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        seen += read_pty(leader, process, deadline)
        try:  # the pty closes as the client's exit begins, a moment before it can be reaped
            status = process.wait(max(0.5, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:  # hung: its threads' stacks (faulthandler) say where
            process.send_signal(signal.SIGABRT)
            seen += read_pty(leader, process, time.monotonic() + 5)
            pytest.fail(f"the client did not exit within 20 s of Ctrl-C:\n{seen}")
        assert status == 130
        assert "detached" in seen and "batchd watch batch_" in seen, seen
        batch_id = seen.split("batchd watch ")[1].split()[0]
        assert batchd(server, "batches", "cancel", batch_id, cwd=tmp_path).returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()  # reaped here: never a "still running" warning in a later test
        os.close(leader)


def test_the_sdk_and_the_cli_retry_what_was_cancelled(server: Server, tmp_path: Path) -> None:
    from openai import OpenAI
    from openai.types import Batch

    with OpenAI(base_url=server.base_url, api_key=server.api_key) as client:
        requests = write_requests(tmp_path / "retry.jsonl", 40, model="crawl-model")
        with requests.open("rb") as file:
            uploaded = client.files.create(file=file, purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
                batch.request_counts and batch.request_counts.completed >= 4):
            time.sleep(0.1)  # a few requests finish, most do not
            batch = client.batches.retrieve(batch.id)
        client.batches.cancel(batch.id)
        while batch.status != "cancelled" and time.monotonic() < deadline + 30:
            time.sleep(0.2)
            batch = client.batches.retrieve(batch.id)
        assert batch.request_counts is not None and 0 < batch.request_counts.failed < 40
        retry = client.post(f"/batches/{batch.id}/retry", cast_to=Batch)
        assert retry.metadata == {"retry_of": batch.id}
        deadline = time.monotonic() + 60
        while retry.status != "completed" and time.monotonic() < deadline:
            time.sleep(0.2)
            retry = client.batches.retrieve(retry.id)
        assert retry.request_counts is not None
        assert retry.request_counts.completed == batch.request_counts.failed
        first = {json.loads(line)["custom_id"]
                 for line in client.files.content(batch.output_file_id or "").text.splitlines()}
        second = {json.loads(line)["custom_id"]
                  for line in client.files.content(retry.output_file_id or "").text.splitlines()}
        assert first.isdisjoint(second) and first | second == {f"r{i}" for i in range(40)}
        again = batchd(server, "batches", "retry", retry.id, cwd=tmp_path)
        assert again.returncode == 1 and "nothing_to_retry" in again.stderr


def test_usage_prints_a_table_by_model_and_batch_and_json(server: Server,
                                                          tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 4)
    assert batchd(server, "submit", str(requests), "--wait", "-o", "u.jsonl",
                  cwd=tmp_path).returncode == 0
    lines = [json.loads(line) for line in (tmp_path / "u.jsonl").read_text().splitlines()]
    run = batchd(server, "usage", "--since", "1d", "--by", "model", "--by", "batch",
                 cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    # A day's rows, or two: the day's buckets split at the second the query was made.
    rows = [line.split() for line in run.stdout.splitlines()
            if "instant-model" in line and " batch " in f" {line} "]
    assert rows and all((model, kind, len(tokens)) == ("instant-model", "batch", 3)
                        and day.startswith("20") for day, model, kind, _, *tokens in rows)
    assert sum(int(row[3].replace(",", "")) for row in rows) >= 4
    as_json = json.loads(batchd(server, "usage", "--since", "1d", "--by", "batch", "--json",
                                cwd=tmp_path).stdout)
    batches = [r for bucket in as_json for r in bucket["results"] if r["batch"]]
    # This module's other batches count too: at least these four lines' tokens.
    assert sum(batch["input_tokens"] for batch in batches) >= sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in lines)
    bad = batchd(server, "usage", "--by", "colour", cwd=tmp_path)
    assert bad.returncode == 2 and "--by 'colour'" in bad.stderr
    assert "total" in run.stdout


def test_estimate_prints_each_model_and_deletes_what_it_uploaded(server: Server,
                                                                 tmp_path: Path) -> None:
    requests = write_requests(tmp_path / "in.jsonl", 3)
    files_before = batchd(server, "files", "list", "--json", cwd=tmp_path).stdout
    run = batchd(server, "estimate", str(requests), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    row = next(line for line in run.stdout.splitlines() if line.startswith("instant-model"))
    assert row.split()[1] == "3"  # requests
    assert "estimated from characters" in run.stdout
    assert batchd(server, "files", "list", "--json", cwd=tmp_path).stdout == files_before
    kept = json.loads(batchd(server, "estimate", str(requests), "--keep", "--json",
                             cwd=tmp_path).stdout)
    assert kept["requests"] == 3 and kept["input_file_id"].startswith("file-")
    again = json.loads(batchd(server, "estimate", kept["input_file_id"], "--json",
                              cwd=tmp_path).stdout)
    assert again["models"] == kept["models"]
    wrong = batchd(server, "estimate", "nothing-here", cwd=tmp_path)
    assert wrong.returncode == 2 and "neither a file here nor a file id" in wrong.stderr
