"""The `batchd` command: serve, worker, keys, models. Every flag also reads `BATCHD_*`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from batchd import event_loop, garbage
from batchd.client.commands import install as install_client_commands
from batchd.client.estimate import estimate as client_estimate
from batchd.client.usage import usage as client_usage
from batchd.errors import BatchdError
from batchd.settings import Settings

app = typer.Typer(help="batchd: a self-hosted, OpenAI-compatible Batch API for open LLMs.",
                  no_args_is_help=True, add_completion=False)
keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
# The client commands (submit, watch, results, batches, files): batchd/client/commands.py.
install_client_commands(app)
app.command("usage")(client_usage)
app.command("estimate")(client_estimate)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("batchd")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from batchd import __version__ as installed
        typer.echo(f"batchd {installed}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True,
        help="Print batchd's version and exit.")] = False,
) -> None:
    """batchd: a self-hosted, OpenAI-compatible Batch API for open LLMs."""

DataDir = Annotated[Path | None, typer.Option(
    "--data-dir", envvar="BATCHD_DATA_DIR", show_envvar=True,
    help="Where the database and stored files live (default: ./batchd-data).")]
ModelsOpt = Annotated[Path | None, typer.Option(
    "--models", envvar="BATCHD_MODELS", show_envvar=True,
    help="YAML file listing the served models (default: SmolLM2-135M-Instruct on llama.cpp).")]


def _settings(**overrides: Any) -> Settings:
    """The settings, from flags and BATCHD_* variables; a wrong value is one line per
    problem and exit status 2."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        _fail([f"BATCHD_{str(e['loc'][0]).upper()}: {e['msg']}" if e["loc"] else e["msg"]
               for e in exc.errors()])


def _fail(problems: list[str], status: int = 2) -> NoReturn:
    for line in problems:
        typer.echo(line, err=True)
    raise typer.Exit(status)


def _checked(settings: Settings) -> None:
    """Read and check the models and tiers files before anything starts (no engine is
    loaded): every mistake is one line naming the file, the model and the key."""
    from batchd.config_problems import ConfigError
    from batchd.engines.registry import load_registry
    from batchd.limits.tiers import load_tiers

    problems: list[str] = []
    for check in (lambda: load_registry(settings.models), lambda: load_tiers(settings.tiers)):
        try:
            check()
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        _fail(problems)


def _logging(settings: Settings) -> None:
    from batchd.log_redaction import redact_root_handlers

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_root_handlers(_secrets(settings))


def _secrets(settings: Settings) -> tuple[str, ...]:
    return (settings.api_key,) if settings.api_key else ()


async def _bootstrap_key(settings: Settings) -> str | None:
    """Reach the backends (migrating the schema); on a first start without BATCHD_API_KEY,
    make a key so the server is usable at once."""
    from batchd.clock import SystemClock
    from batchd.keys import KeyService
    from batchd.limits.tiers import ADMIN_TIER

    async with _backends(settings) as store:
        if settings.api_key:
            return None
        keys = KeyService(store=store, clock=SystemClock())
        if await keys.list():
            return None
        _, secret = await keys.create_operator_key(tier=ADMIN_TIER)
        return secret


@contextlib.asynccontextmanager
async def _backends(settings: Settings) -> AsyncIterator[Any]:
    """The metadata store, migrated, once the object store answers too. An unreachable
    database or bucket (after `BATCHD_BACKEND_WAIT_SECONDS` of retrying) or wrong
    credentials end the command with one line and exit status 1."""
    from sqlalchemy.exc import ArgumentError

    from batchd.backends import open_blob_store, preflight
    from batchd.store.metadata import MetadataStore

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = MetadataStore(settings.resolved_database_url)
    except (ArgumentError, ImportError, ValueError) as exc:
        _fail([f"BATCHD_DATABASE_URL: {exc}"])
    try:
        try:
            await preflight(settings, store, open_blob_store(settings),
                            wait_seconds=settings.backend_wait_seconds)
        except BatchdError as exc:
            _fail([f"batchd cannot start: {exc.message}"], status=1)
        yield store
    finally:
        await store.close()


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(
        envvar="BATCHD_HOST", show_envvar=True,
        help="Address to listen on (default: 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(
        envvar="BATCHD_PORT", show_envvar=True, help="Port to listen on (default: 8000).")] = None,
    data_dir: DataDir = None,
    models: ModelsOpt = None,
    worker: Annotated[bool | None, typer.Option(
        "--worker/--no-worker", envvar="BATCHD_EMBEDDED_WORKER", show_envvar=True,
        help="Run the batch worker inside the server (default: on).")] = None,
) -> None:
    """Run the HTTP API (and, by default, a worker) until interrupted."""
    import uvicorn

    from batchd.app import create_app
    from batchd.log_redaction import uvicorn_log_config
    from batchd.probes import Probes
    from batchd.server import (
        CleanExitServer,
        PortUnavailable,
        guarded_protocol,
        listen,
    )

    settings = _settings(host=host, port=port, data_dir=data_dir, models=models,
                         embedded_worker=worker)
    _checked(settings)
    try:
        listener = listen(settings.host, settings.port)
    except PortUnavailable as exc:
        _fail([str(exc)])
    _logging(settings)
    # The probes first: a server waiting for its database, or loading its models, says so
    # on the metrics port (the API port answers once everything has started).
    probes = Probes()
    with probes.serving(settings.metrics_host, settings.metrics_port):
        probes.starting("waiting for the database and the object store")
        secret = asyncio.run(_bootstrap_key(settings))
        base_url = f"http://{settings.host}:{settings.port}/v1"
        typer.echo(f"batchd {base_url}")
        if secret:
            typer.echo(f"Created the first API key (shown once, keep it): {secret}")
            typer.echo(f"  export OPENAI_BASE_URL={base_url} OPENAI_API_KEY={secret}")
        elif settings.api_key:
            typer.echo("Accepting the key in BATCHD_API_KEY.")
        worker_failures: list[BaseException] = []

        def worker_failed(failure: BaseException) -> None:
            # The server shuts down as on SIGTERM (the lifespan stops the rest), then exits 1.
            worker_failures.append(failure)
            server.should_exit = True

        # record_crashes: a fatal signal in this process is evidence against what it ran.
        asgi = create_app(settings, record_crashes=True, on_worker_failure=worker_failed,
                          probes=probes)
        config = uvicorn.Config(asgi, host=settings.host, port=settings.port,
                                log_level=settings.log_level,
                                log_config=uvicorn_log_config(_secrets(settings)),
                                http=guarded_protocol(settings.header_timeout_seconds),
                                loop=settings.event_loop,
                                timeout_keep_alive=settings.keepalive_timeout_seconds,
                                timeout_graceful_shutdown=int(settings.shutdown_grace_seconds))
        server = CleanExitServer(config, on_exit=asgi.state.probes.drain)
        garbage.settle_after_start_up()  # the app is built; the models load in its lifespan
        server.run(sockets=[listener])
        if worker_failures:
            _fail([f"batchd serve: {worker_failures[0]}; exiting so that it is restarted"], 1)



@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring the database schema up to date (and check the object store answers), then exit.
    Safe to run while other batchd processes start or run: migrations take turns."""
    from batchd.backends import where

    settings = _settings(data_dir=data_dir)
    _logging(settings)

    async def run() -> None:
        async with _backends(settings):
            pass

    asyncio.run(run())
    typer.echo(f"schema up to date: {where(settings)}")


@app.command("worker")
def worker_command(data_dir: DataDir = None, models: ModelsOpt = None) -> None:
    """Run a worker alone (no HTTP), sharing the database and object store with
    `batchd serve --no-worker` and other workers. Its --data-dir holds only its identity."""
    from batchd.app import close_services, open_services, serving, start_worker
    from batchd.probes import Probes

    settings = _settings(data_dir=data_dir, models=models)
    _checked(settings)
    _logging(settings)
    probes = Probes()

    async def run() -> BaseException | None:
        # Handlers first: a SIGTERM during start-up must still end in a clean exit.
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        def stopping() -> None:
            probes.drain()  # not ready from the signal on, even while still starting
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping)
        # The probes first: a worker waiting for the database, or loading its models, says so.
        with probes.serving(settings.metrics_host, settings.metrics_port):
            probes.starting("waiting for the database and the object store")
            async with _backends(settings):
                pass  # one clear line, not a traceback, if a backend is unreachable
            svc = await open_services(settings, probes=probes)

            def failed(failure: BaseException) -> None:
                probes.died(str(failure))
                stop.set()

            # A dying loop stops the worker (runner.py); the process then ends as on SIGTERM.
            worker, identity = await start_worker(svc, record_crashes=True, on_failure=failed)
            garbage.settle_after_start_up()
            typer.echo(f"batchd worker {identity.id} running; Ctrl-C to stop")
            async with serving(svc, probes):
                await stop.wait()
            await worker.stop(settings.shutdown_grace_seconds)
            identity.close()
            await close_services(svc)
            return worker.failed

    failure = event_loop.run(run(), settings.event_loop)
    if failure is not None:
        _fail([f"batchd worker: {failure}; exiting so that it is restarted"], 1)


@app.command()
def probe(ready: Annotated[bool, typer.Option(
        "--ready", help="Readiness (/readyz) rather than liveness (/healthz).")] = False,
) -> None:
    """Ask the batchd process on this machine whether it is alive (or, with --ready, ready
    for work): exit 0 if so, 1 with the reason if not. Asks BATCHD_METRICS_PORT when set
    (every process, workers too, serves the probes there), else the API port. For a
    container's HEALTHCHECK or an exec probe."""
    import json
    import urllib.error
    import urllib.request

    settings = _settings()
    port = settings.metrics_port or settings.port
    host = settings.metrics_host if settings.metrics_port else settings.host
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/" \
          f"{'readyz' if ready else 'healthz'}"
    # Straight to this machine: a proxy from HTTP_PROXY would answer for it, or fail.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as answer:
            typer.echo(answer.read().decode(errors="replace"))
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            reason = f"HTTP {exc.code}"
        _fail([f"{url}: {reason}"], status=1)
    except OSError as exc:
        _fail([f"{url}: {getattr(exc, 'reason', exc)}"], status=1)


def _with_keys(settings: Settings, action: Any) -> Any:
    from batchd.clock import SystemClock
    from batchd.keys import KeyService

    async def run() -> Any:
        async with _backends(settings) as store:
            return await action(KeyService(store=store, clock=SystemClock()))

    return asyncio.run(run())


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="A label for the key (also its owner by default).")],
    owner: Annotated[str | None, typer.Option(help="Who owns what this key creates.")] = None,
    tier: Annotated[str | None, typer.Option(
        help="Service tier: trial, core, scale, enterprise, or one from BATCHD_TIERS "
             "(default: the tiers file's default_tier, core).")] = None,
    admin: Annotated[bool, typer.Option(help="Give the key the admin role.")] = False,
    data_dir: DataDir = None,
    tiers_file: Annotated[Path | None, typer.Option(
        "--tiers", envvar="BATCHD_TIERS", show_envvar=True,
        help="YAML file of service tiers (default: built-in kluster-like tiers).")] = None,
) -> None:
    """Create a key and print its secret (shown only this once)."""
    from batchd.config_problems import ConfigError
    from batchd.limits.tiers import load_tiers

    try:
        tiers = load_tiers(tiers_file)
    except ConfigError as exc:
        _fail(exc.problems)
    chosen = tier or tiers.default_tier
    if chosen not in tiers.tiers:
        typer.echo(f"unknown tier {chosen!r}; known: {', '.join(tiers.tiers)}", err=True)
        raise typer.Exit(2)
    try:
        key, secret = _with_keys(_settings(data_dir=data_dir), lambda keys: keys.create(
            name=name, owner=owner, role="admin" if admin else "user", tier=chosen))
    except BatchdError as exc:
        _fail([exc.message])
    typer.echo(f"{key.id}  owner={key.owner}  role={key.role}  tier={key.tier}")
    typer.echo(secret)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None) -> None:
    """List keys (never their secrets)."""
    for key in _with_keys(_settings(data_dir=data_dir), lambda keys: keys.list()):
        state = "revoked" if key.revoked_at else "active"
        typer.echo(f"{key.id}  {key.name}  owner={key.owner}  role={key.role}  "
                   f"tier={key.tier}  {key.prefix}…  {state}")


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="Key id, or the name of exactly one active key.")],
    data_dir: DataDir = None,
) -> None:
    """Revoke one key; it stops working at once."""

    async def revoke(keys: Any) -> Any:
        return await keys.revoke((await keys.resolve(key)).id)

    try:
        revoked = _with_keys(_settings(data_dir=data_dir), revoke)
    except BatchdError as exc:
        _fail([exc.message], status=1)
    typer.echo(f"revoked {revoked.id} ({revoked.name}, owner={revoked.owner})")


@app.command("models")
def models_command(models: ModelsOpt = None) -> None:
    """List the models (ids and aliases) the configuration serves."""
    from batchd.config_problems import ConfigError
    from batchd.engines.registry import load_registry

    try:
        registry = load_registry(models)
    except ConfigError as exc:
        _fail(exc.problems)
    for entry in registry.config.models:
        aliases = f"  (aliases: {', '.join(entry.aliases)})" if entry.aliases else ""
        serves = ",".join(entry.serves)
        typer.echo(f"{entry.id}  engine={entry.engine}  serves={serves}{aliases}")


def main() -> None:
    app()
