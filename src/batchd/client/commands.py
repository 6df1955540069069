"""`batchd` as a client: submit a file and watch it, list and fetch batches and files.

Each command talks to a running batchd (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, or the flags)
through the public API with that key. A failure is one line on stderr and exit status 1
(2 for a usage mistake); `--json` prints the API's objects for scripts.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from batchd.client.api import BatchdClient, ClientError, resolve
from batchd.client.terminal import print_table, safe, safe_text
from batchd.client.watch import POLL_SECONDS, TERMINAL, done_of, poll_batch, watch

BaseUrl = Annotated[str | None, typer.Option(
    "--base-url", envvar="OPENAI_BASE_URL", show_envvar=True,
    help="batchd's API root (default: http://127.0.0.1:8000/v1).")]
ApiKey = Annotated[str | None, typer.Option(
    "--api-key", envvar="OPENAI_API_KEY", show_envvar=True, help="An API key.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON objects.")]
Output = Annotated[Path | None, typer.Option(
    "-o", "--output", help="Where the output file goes (default: BATCH_ID_output.jsonl).")]
Errors = Annotated[Path | None, typer.Option(
    "--errors", help="Where the error file goes (default: BATCH_ID_errors.jsonl).")]

batches_app = typer.Typer(help="List, inspect and cancel batches.", no_args_is_help=True)
files_app = typer.Typer(help="List, inspect, download and delete files.", no_args_is_help=True)

P = ParamSpec("P")
R = TypeVar("R")


# Markup off: file names, metadata and messages come from the server and users, and must
# print as they are ("[/x]" in a file name is text, not a style tag). Their control
# characters are escaped too (`safe`): an escape sequence in another tenant's file name must
# not drive the terminal of the admin who lists it.
def _err() -> Console:
    return Console(stderr=True, markup=False)


def _out() -> Console:
    return Console(markup=False)


def _row(table: Table, *values: object) -> None:
    table.add_row(*(safe_text(value) for value in values))


def _fail(message: str, status: int = 1) -> NoReturn:
    # One line whatever the message holds: a newline in it is escaped like any control.
    _err().print(Text.assemble(("error:", "red"), " ", safe(message)), soft_wrap=True)
    raise typer.Exit(status)


def one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except ClientError as exc:
            _fail(exc.message)
        except KeyboardInterrupt:
            _fail("interrupted", status=130)
        except OSError as exc:  # a local file: not found, not writable
            _fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))

    return run


@contextmanager
def _client(base_url: str | None, api_key: str | None) -> Iterator[BatchdClient]:
    try:
        base, key = resolve(base_url, api_key)
    except ClientError as exc:
        _fail(exc.message, status=2)
    with BatchdClient(base, key) as client:
        yield client


def _print_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2))


def _when(timestamp: int | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _size(count: object) -> str:
    if not isinstance(count, int):
        return str(count)
    size, unit = float(count), "B"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            break
        size /= 1024
    return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"


def _transfer_bar(console: Console) -> Progress:
    # markup=False: the description names a local file, and "[/x]" in a name is not a tag.
    return Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(), console=console, transient=True)


def _metadata(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            _fail(f"--metadata takes key=value, not {pair!r}", status=2)
        out[key] = value
    return out


# --- submit, watch, results ----------------------------------------------------------------


@one_line_errors
def submit(
    file: Annotated[Path, typer.Argument(help="A JSONL file of requests, as OpenAI's.",
                                         exists=True, dir_okay=False, readable=True)],
    window: Annotated[str, typer.Option("--window", help="Completion window.")] = "24h",
    endpoint: Annotated[str, typer.Option(
        help="The endpoint every line calls.")] = "/v1/chat/completions",
    metadata: Annotated[list[str] | None, typer.Option(
        "--metadata", help="key=value, repeatable.")] = None,
    wait: Annotated[bool, typer.Option(
        "--wait", help="Watch it to the end, then download the results.")] = False,
    output: Output = None, errors: Errors = None, as_json: AsJson = False,
    base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Upload FILE, create a batch from it and (with --wait) watch it and fetch the results."""
    pairs = _metadata(metadata or [])
    console = _err()
    with _client(base_url, api_key) as client:
        size = file.stat().st_size
        with _transfer_bar(console) as bar:
            task = bar.add_task(f"uploading {safe(file.name)}", total=size)
            uploaded = client.upload(file, progress=lambda n: bar.advance(task, n))
        batch = client.create_batch(input_file_id=uploaded["id"], endpoint=endpoint,
                                    window=window, metadata=pairs)
        if not as_json:
            console.print(Text.assemble("created ", (safe(batch["id"]), "bold"),
                                        f" from {safe(uploaded['id'])} ({size:,} bytes)"))
        if not wait:
            if as_json:
                _print_json(batch)
            else:
                console.print(f"watch it with: batchd watch {safe(batch['id'])}")
            return
        _watch_and_fetch(client, batch["id"], console, output=output, errors=errors,
                         as_json=as_json)


@one_line_errors
def watch_command(
    batch_id: Annotated[str, typer.Argument(help="The batch to watch.")],
    output: Output = None, errors: Errors = None,
    download: Annotated[bool, typer.Option(
        "--download/--no-download", help="Fetch the results when it ends.")] = True,
    as_json: AsJson = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Show a batch's progress until it ends (Ctrl-C detaches), then fetch its results."""
    with _client(base_url, api_key) as client:
        _watch_and_fetch(client, batch_id, _err(), output=output, errors=errors,
                         as_json=as_json, download=download)


def _watch_and_fetch(client: BatchdClient, batch_id: str, console: Console, *,
                     output: Path | None, errors: Path | None, as_json: bool,
                     download: bool = True) -> None:
    try:
        if as_json:
            batch = poll_batch(client, batch_id, patience=0)
            while batch["status"] not in TERMINAL:
                time.sleep(POLL_SECONDS)
                batch = poll_batch(client, batch_id)
        else:
            batch = watch(client, batch_id, console)
    except KeyboardInterrupt:
        console.print(f"\ndetached; {safe(batch_id)} keeps running. Watch it again with: "
                      f"batchd watch {safe(batch_id)}")
        raise typer.Exit(130) from None
    saved = _fetch(client, batch, console, output=output, errors=errors) if download else {}
    if as_json:
        _print_json({**batch, "downloaded": {k: str(v) for k, v in saved.items()}})
        if batch["status"] != "completed":
            raise typer.Exit(1)
        return
    completed, failed, total = done_of(batch)
    console.print(f"{safe(batch_id)} {safe(batch['status'])}: {completed} completed, "
                  f"{failed} failed of {total}")
    _print_errors(console, (batch.get("errors") or {}).get("data", [])[:10])
    for kind, path in saved.items():
        console.print(f"{kind} → {safe(path)}")
    if batch["status"] != "completed":
        raise typer.Exit(1)


def _fetch(client: BatchdClient, batch: dict[str, Any], console: Console, *,
           output: Path | None, errors: Path | None) -> dict[str, Path]:
    saved = {}
    targets = (("output", batch.get("output_file_id"),
                output or Path(f"{batch['id']}_output.jsonl")),
               ("errors", batch.get("error_file_id"),
                errors or Path(f"{batch['id']}_errors.jsonl")))
    for kind, file_id, path in targets:
        if not file_id:
            continue
        meta = client.file(file_id)
        with _transfer_bar(console) as bar:
            task = bar.add_task(f"downloading {kind}", total=meta.get("bytes"))
            client.download(file_id, path, progress=functools.partial(bar.advance, task))
        saved[kind] = path
    return saved


@one_line_errors
def results(
    batch_id: Annotated[str, typer.Argument(help="A finished batch.")],
    output: Output = None, errors: Errors = None, as_json: AsJson = False,
    base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Download a finished batch's output and error files."""
    console = _err()
    with _client(base_url, api_key) as client:
        batch = client.batch(batch_id)
        if batch["status"] not in TERMINAL:
            _fail(f"{batch_id} is {batch['status']}: its results come when it ends "
                  f"(batchd watch {batch_id})")  # _fail escapes it all
        saved = _fetch(client, batch, console, output=output, errors=errors)
    if as_json:
        _print_json({k: str(v) for k, v in saved.items()})
        return
    if not saved:
        console.print(f"{safe(batch_id)} has no result files ({safe(batch['status'])})")
    for kind, path in saved.items():
        console.print(f"{kind} → {safe(path)}")


# --- batches -------------------------------------------------------------------------------


@batches_app.command("list")
@one_line_errors
def batches_list(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    after: Annotated[str | None, typer.Option(help="Start after this batch id.")] = None,
    as_json: AsJson = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Batches, newest first."""
    with _client(base_url, api_key) as client:
        page = client.batches(limit=limit, after=after)
    if as_json:
        _print_json(page)
        return
    rows = []
    for batch in page["data"]:
        completed, failed, total = done_of(batch)
        rows.append((batch["id"], batch["status"], f"{completed + failed}/{total}", failed,
                     _when(batch.get("created_at")),
                     json.dumps(batch.get("metadata") or {}, ensure_ascii=False)))
    print_table(_out(), ("id", "status", "done / total", "failed", "created", "metadata"),
                rows, free_text=("metadata",))
    if page.get("has_more"):
        _out().print(f"more: --after {safe(page['data'][-1]['id'])}", soft_wrap=True)


@batches_app.command("get")
@one_line_errors
def batches_get(batch_id: str, as_json: AsJson = False, base_url: BaseUrl = None,
                api_key: ApiKey = None) -> None:
    """One batch, in full."""
    with _client(base_url, api_key) as client:
        batch = client.batch(batch_id)
    if as_json:
        _print_json(batch)
        return
    completed, failed, total = done_of(batch)
    usage = batch.get("usage") or {}
    rows = [("id", batch["id"]), ("status", batch["status"]),
            ("requests", f"{completed} completed, {failed} failed, {total} total"),
            ("tokens", f"{usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} out"),
            ("created", _when(batch.get("created_at"))),
            ("expires", _when(batch.get("expires_at"))),
            ("input file", batch.get("input_file_id") or "-"),
            ("output file", batch.get("output_file_id") or "-"),
            ("error file", batch.get("error_file_id") or "-"),
            ("metadata", json.dumps(batch.get("metadata") or {}, ensure_ascii=False))]
    table = Table(show_header=False, box=None)
    for name, value in rows:
        _row(table, name, str(value))
    _out().print(table)
    _print_errors(_out(), (batch.get("errors") or {}).get("data", []))


@batches_app.command("cancel")
@one_line_errors
def batches_cancel(batch_id: str, as_json: AsJson = False, base_url: BaseUrl = None,
                   api_key: ApiKey = None) -> None:
    """Cancel a batch: finished results are kept, the rest are reported as cancelled."""
    with _client(base_url, api_key) as client:
        batch = client.cancel(batch_id)
    if as_json:
        _print_json(batch)
    else:
        _out().print(f"{safe(batch['id'])} {safe(batch['status'])}")


@batches_app.command("retry")
@one_line_errors
def batches_retry(batch_id: str, as_json: AsJson = False, base_url: BaseUrl = None,
                  api_key: ApiKey = None) -> None:
    """Create a new batch of a finished batch's lines that failed, were cancelled or
    expired (a batchd extension)."""
    with _client(base_url, api_key) as client:
        batch = client.retry(batch_id)
    if as_json:
        _print_json(batch)
    else:
        _out().print(f"created {safe(batch['id'])} (retry of {safe(batch_id)}); watch it "
                     f"with: batchd watch {safe(batch['id'])}", soft_wrap=True)


# --- files ---------------------------------------------------------------------------------


@files_app.command("list")
@one_line_errors
def files_list(
    limit: Annotated[int, typer.Option(help="How many.")] = 20,
    after: Annotated[str | None, typer.Option(help="Start after this file id.")] = None,
    purpose: Annotated[str | None, typer.Option(help="Only files of this purpose.")] = None,
    as_json: AsJson = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Files (uploads and batch results)."""
    with _client(base_url, api_key) as client:
        page = client.files(limit=limit, after=after, purpose=purpose)
    if as_json:
        _print_json(page)
        return
    # Sizes as people read them, to leave the width to ids and names (`files get` and
    # --json give the exact bytes).
    print_table(_out(), ("id", "name", "purpose", "size", "created", "expires"),
                [(file["id"], file["filename"], file["purpose"], _size(file["bytes"]),
                  _when(file.get("created_at")), _when(file.get("expires_at")))
                 for file in page["data"]], free_text=("name",))


@files_app.command("get")
@one_line_errors
def files_get(file_id: str, as_json: AsJson = False, base_url: BaseUrl = None,
              api_key: ApiKey = None) -> None:
    """One file's details."""
    with _client(base_url, api_key) as client:
        file = client.file(file_id)
    if as_json:
        _print_json(file)
        return
    table = Table(show_header=False, box=None)
    for name in ("id", "filename", "purpose", "bytes", "status"):
        _row(table, name, str(file.get(name)))
    _row(table, "created", _when(file.get("created_at")))
    _row(table, "expires", _when(file.get("expires_at")))
    _out().print(table)


@files_app.command("download")
@one_line_errors
def files_download(
    file_id: str,
    output: Annotated[Path | None, typer.Option(
        "-o", "--output", help="Where to write it (default: the file's name).")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing file of that name.")] = False,
    base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Download a file's content."""
    with _client(base_url, api_key) as client:
        meta = client.file(file_id)
        path = output or Path(Path(meta["filename"]).name or file_id)
        if output is None and path.exists() and not force:
            _fail(f"{path} exists: choose another name with -o, or replace it with --force")
        with _transfer_bar(_err()) as bar:
            task = bar.add_task(f"downloading {safe(file_id)}", total=meta.get("bytes"))
            size = client.download(file_id, path, progress=lambda n: bar.advance(task, n))
    _err().print(f"{safe(file_id)} → {safe(path)} ({size:,} bytes)", soft_wrap=True)


@files_app.command("delete")
@one_line_errors
def files_delete(file_id: str, as_json: AsJson = False, base_url: BaseUrl = None,
                 api_key: ApiKey = None) -> None:
    """Delete a file."""
    with _client(base_url, api_key) as client:
        deleted = client.delete_file(file_id)
    if as_json:
        _print_json(deleted)
    else:
        _out().print(f"deleted {safe(file_id)}")


def _print_errors(console: Console, errors: list[dict[str, Any]]) -> None:
    """A failed batch's errors, one line each (their messages quote users' input)."""
    for error in errors:
        line = f"line {safe(error['line'])}: " if error.get("line") else ""
        console.print(f"  {line}{safe(error.get('message'))} ({safe(error.get('code'))})",
                      highlight=False, soft_wrap=True)


def install(app: typer.Typer) -> None:
    app.command("submit")(submit)
    app.command("watch")(watch_command)
    app.command("results")(results)
    app.add_typer(batches_app, name="batches")
    app.add_typer(files_app, name="files")

