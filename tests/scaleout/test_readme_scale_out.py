"""README's "Scaling out" commands, run as written (with this run's servers and ports): create
the database and user, migrate, one API and two workers, a batch through the `openai` SDK."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.support.backends import PG_BIN, PostgresServer, S3Server
from tests.support.lines import INSTANT_MODELS
from tests.support.ports import free_port, wait_for_http
from tests.support.server import REPO, run_instant_batch


def scale_out_block() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Scaling out"):readme.index("## Performance")]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block is not None
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_the_readme_scale_out_commands_run_a_batch(
    tmp_path: Path, postgres_server: PostgresServer, s3_server: S3Server,
) -> None:
    lines = scale_out_block()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "AWS_"))}
    for line in lines:
        if line.startswith("export "):
            for assignment in shlex.split(line)[1:]:
                name, _, value = assignment.partition("=")
                env[name] = value
    assert {"BATCHD_DATABASE_URL", "BATCHD_BLOB_URL", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP",
            "BATCHD_API_KEY"} <= set(env)
    # This run's servers stand in for the README's hosts, ports and S3 credentials.
    env["BATCHD_DATABASE_URL"] = env["BATCHD_DATABASE_URL"].replace(
        "127.0.0.1:5432", f"127.0.0.1:{postgres_server.port}")
    env.update(s3_server.environment())
    env["BATCHD_BLOB_URL"] = env["BATCHD_BLOB_URL"].replace("s3://batchd/",
                                                            f"s3://{s3_server.bucket}/readme-")
    [create_db] = [line for line in lines if line.startswith("psql ")]
    statements = [arg for flag, arg in zip(shlex.split(create_db),
                                           shlex.split(create_db)[1:], strict=False)
                  if flag == "-c"]
    for sql in statements:
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "-h",
                        str(postgres_server.sockets), "-p", str(postgres_server.port), "-U",
                        "postgres", "-v", "ON_ERROR_STOP=1", "-c", sql], check=True,
                       capture_output=True)
    (tmp_path / "models.yaml").write_text(INSTANT_MODELS)
    port = free_port()
    batchd_lines = [line.removesuffix("&").strip() for line in lines
                    if line.startswith("batchd ")]
    assert [shlex.split(line)[1] for line in batchd_lines] == ["migrate", "serve", "worker",
                                                               "worker"]
    migrate = subprocess.run([sys.executable, "-m", "batchd", *shlex.split(batchd_lines[0])[1:]],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert migrate.returncode == 0, migrate.stderr
    processes = []
    try:
        for line in batchd_lines[1:]:
            args = shlex.split(line.replace("0.0.0.0", "127.0.0.1")
                               .replace("--port 8000", f"--port {port}"))[1:]
            with (tmp_path / f"{len(processes)}.log").open("wb") as log:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "batchd", *args], cwd=tmp_path, env=env,
                    stdout=log, stderr=subprocess.STDOUT))
        assert wait_for_http(f"http://127.0.0.1:{port}/healthz", process=processes[0])
        ids = run_instant_batch(f"http://127.0.0.1:{port}/v1", env["BATCHD_API_KEY"],
                                tmp_path, 30)
        assert len(ids) == 30
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
