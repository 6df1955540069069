"""What the `batchd` client prints comes from the server, and through it from other people:
it is printed escaped (an escape sequence in another tenant's file name used to reach an
admin's terminal as it was), and ids are printed whole at any width (`batches list` and
`files list` used to cut them at 80 columns: `batch_acf43…`)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from batchd import __version__
from batchd.cli import app
from batchd.client import commands
from batchd.client.terminal import safe
from batchd.client.watch import clock_text, seconds_left

BATCH_IDS = [f"batch_acf43{n:x}{'0' * 18}" for n in range(3)]  # 30 characters, as real
FILE_IDS = [f"file-{n}" + "9" * 23 for n in range(3)]
EVIL = "evil\x1b]0;owned\x07\x1b[2J\x9b31m\u202etxt.jsonl\r\nforged row\x00\x7f"


class FakeClient:
    """Stands in for BatchdClient: canned pages, as a hostile server might send them."""

    def __init__(self, *_: object, **__: object) -> None:
        pass

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *_: object) -> None:
        pass

    def batches(self, **_: object) -> dict[str, Any]:
        return {"object": "list", "has_more": True, "data": [
            {"id": batch_id, "status": "in_progress" if n else f"done{EVIL}",
             "request_counts": {"completed": 5, "failed": 1, "total": 10},
             "created_at": 1_750_000_000,
             "metadata": {"project": "evals with a long description " * 2, "k": EVIL}}
            for n, batch_id in enumerate(BATCH_IDS)]}

    def files(self, **_: object) -> dict[str, Any]:
        return {"object": "list", "has_more": False, "data": [
            {"id": file_id, "filename": EVIL if n == 0 else "a-rather-long-file-name.jsonl",
             "purpose": "batch", "bytes": 123_456_789, "created_at": 1_750_000_000,
             "expires_at": 1_752_592_000} for n, file_id in enumerate(FILE_IDS)]}

    def file(self, file_id: str) -> dict[str, Any]:
        return {"id": file_id, "filename": EVIL, "purpose": "batch", "bytes": 1,
                "status": "processed", "created_at": 1_750_000_000, "expires_at": None}

    def batch(self, batch_id: str) -> dict[str, Any]:
        page = self.batches()["data"][0]
        return {**page, "id": batch_id, "errors": {"data": [
            {"line": 3, "code": EVIL, "message": f"bad line {EVIL}"}]}}


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    monkeypatch.setattr(commands, "BatchdClient", FakeClient)
    yield CliRunner()


def run(runner: CliRunner, *args: str, columns: int = 80) -> str:
    result = runner.invoke(app, list(args), env={
        "COLUMNS": str(columns), "LINES": "50", "OPENAI_API_KEY": "sk-x",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "TERM": "xterm-256color"})
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")  # all but \t and \n


def assert_inert(output: str) -> None:
    assert not CONTROLS.search(output), repr(output)


@pytest.mark.parametrize("columns", [200, 120, 80, 60, 40, 30, 20])
@pytest.mark.parametrize(("command", "ids"), [(("batches", "list"), BATCH_IDS),
                                              (("files", "list"), FILE_IDS)])
def test_lists_print_every_id_whole_at_any_width(cli: CliRunner, command: tuple[str, ...],
                                                 ids: list[str], columns: int) -> None:
    output = run(cli, *command, columns=columns)
    for full_id in ids:
        assert re.search(rf"(?<![\w-]){re.escape(full_id)}(?![\w-])", output), (
            full_id, output)
    assert_inert(output)
    if columns >= 80:  # still a table where one fits: its header is ruled
        assert "─" * 20 in output, output
        assert not any(line.startswith(("  status:", "  name:")) for line in
                       output.splitlines()), output


@pytest.mark.parametrize("args", [("files", "list"), ("files", "get", "file-1"),
                                  ("batches", "list"), ("batches", "get", "batch_1")])
def test_server_text_is_printed_escaped_never_obeyed(cli: CliRunner,
                                                     args: tuple[str, ...]) -> None:
    output = run(cli, *args, columns=400)
    assert_inert(output)
    assert not any(line.lstrip("│ ").startswith("forged row") for line in output.splitlines())
    assert "evil\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202etxt.jsonl\\x0d\\x0aforged row" \
        "\\x00\\x7f" in output, output


def test_an_error_message_from_the_server_is_one_escaped_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Refusing(FakeClient):
        def batches(self, **_: object) -> dict[str, Any]:
            raise commands.ClientError(f"400: {EVIL}", status=400)

    monkeypatch.setattr(commands, "BatchdClient", Refusing)
    result = CliRunner().invoke(app, ["batches", "list"], env={"OPENAI_API_KEY": "sk-x"})
    assert result.exit_code == 1
    assert_inert(result.output)
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_safe_escapes_controls_and_keeps_the_rest() -> None:
    assert safe("plain [bold] é 漢字 ✓ name.jsonl") == "plain [bold] é 漢字 ✓ name.jsonl"
    assert safe("\x1b\t\n\u200b\u2028\ud800") == "\\x1b\\x09\\x0a\\u200b\\u2028\\ud800"
    assert safe(42) == "42"


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"batchd {__version__}"


def test_the_time_left_is_the_batch_s_own_pace_since_it_started_running() -> None:
    running = {"status": "in_progress", "in_progress_at": 100,
               "request_counts": {"total": 100, "completed": 20, "failed": 5}}
    assert seconds_left(running, now=110) == 30.0  # 25 in 10 s: 75 more in 30 s
    assert clock_text(seconds_left(running, now=110)) == "0:00:30"
    assert seconds_left({**running, "status": "finalizing"}, now=110) is None
    assert seconds_left({**running, "request_counts": {"total": 100}}, now=110) is None
    assert clock_text(None) == "-:--:--" and clock_text(3725.9) == "1:02:05"
