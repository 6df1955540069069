"""Starting against the shared backends: migrations that take turns, and one clear line (never
a traceback) for an unreachable database or bucket or wrong credentials."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.backends import PostgresServer, S3Server
from tests.support.ports import free_port


def batchd(*args: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "AWS_"))}
    return subprocess.Popen([sys.executable, "-m", "batchd", *args], cwd=cwd,
                            env={**clean, "BATCHD_LOG_LEVEL": "error", **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_many_processes_may_migrate_at_once(
    database: str, tmp_path: Path, postgres_server: PostgresServer,
) -> None:
    env = {"BATCHD_DATA_DIR": str(tmp_path / "shared")}
    if database == "postgresql":
        env["BATCHD_DATABASE_URL"] = postgres_server.create_database()
    runs = [batchd("migrate", env=env, cwd=tmp_path) for _ in range(4)]
    for run in runs:
        out, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert "schema up to date" in out


def one_line_failure(run: subprocess.Popen[str]) -> str:
    _, err = run.communicate(timeout=120)
    assert run.returncode == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_wrong_database_credentials_are_one_line(
    tmp_path: Path, postgres_server: PostgresServer,
) -> None:
    url = postgres_server.create_database().replace(postgres_server.password, "wrong")
    line = one_line_failure(batchd("migrate", env={"BATCHD_DATABASE_URL": url}, cwd=tmp_path))
    assert "refused the credentials in BATCHD_DATABASE_URL" in line
    assert "wrong" not in line  # the password is never echoed


def test_an_unreachable_database_is_retried_then_one_line(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://u:p@127.0.0.1:{free_port()}/db"
    line = one_line_failure(batchd("worker", env={"BATCHD_DATABASE_URL": url,
                                                  "BATCHD_BACKEND_WAIT_SECONDS": "1"},
                                   cwd=tmp_path))
    assert line.startswith("batchd cannot start: The database is unreachable")


def test_an_unreachable_or_refusing_bucket_is_one_line(
    tmp_path: Path, s3_server: S3Server,
) -> None:
    env = {**s3_server.environment(), "BATCHD_BLOB_URL": f"s3://{s3_server.bucket}/cli",
           "BATCHD_BACKEND_WAIT_SECONDS": "1"}
    line = one_line_failure(batchd("migrate", env={**env, "AWS_SECRET_ACCESS_KEY": "nope"},
                                   cwd=tmp_path))
    assert "refused batchd's credentials" in line
    line = one_line_failure(batchd("migrate", env={
        **env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}, cwd=tmp_path))
    assert "object store is unavailable" in line
