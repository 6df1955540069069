"""A newcomer's first mistakes: each is one line naming the file, the model and the key (or
the port and who holds it), with exit status 2, before anything starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ports import free_port

# The default set-up (SQLite and the data dir) a newcomer gets: the same on every
# backend, so run once.
pytestmark = pytest.mark.backend_independent

REPO = Path(__file__).resolve().parents[2]


def batchd(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    return subprocess.run([sys.executable, "-m", "batchd", *args], capture_output=True,
                          text=True, cwd=cwd, env={**clean, **env}, timeout=60)


@pytest.mark.parametrize(("models", "expected"), [
    ("models:\n  - id: x\n    engine: llamacpp\n    model_path: /nope.gguf\n",
     ["models.yaml: model 'x': model_path: /nope.gguf does not exist"]),
    ("models:\n  - id: x\n    engine: instant\n    colour: blue\n",
     ["models.yaml: model 'x': unknown key 'colour'"]),
    ("models:\n  - id: x\n    engine: warp\n",
     ["models.yaml: model 'x': unknown engine 'warp' (known: instant, llamacpp, upstream)"]),
    ("models:\n  - id: x\n   engine: [\n",
     ["models.yaml: not valid YAML: line 3, column 4: expected <block end>, but found "
      "'<block mapping start>'"]),
    ("models:\n  - engine: instant\n  - id: y\n    engine: instant\n    n_ctx: 5\n"
     "  - id: y\n    engine: instant\n",
     ["models.yaml: models[0]: missing key 'id'",
      "models.yaml: model 'y': unknown key 'n_ctx'",
      "models.yaml: model 'y': the name 'y' is listed twice"]),
])
@pytest.mark.parametrize("command", ["serve", "worker", "models"])
def test_a_mistake_in_the_models_file_is_one_line_each(
    tmp_path: Path, command: str, models: str, expected: list[str],
) -> None:
    (tmp_path / "models.yaml").write_text(models)
    result = batchd(command, "--models", "models.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == expected
    assert "Traceback" not in result.stdout + result.stderr
    assert "batchd http" not in result.stdout  # the banner is never printed for a dead server
    assert not (tmp_path / "batchd-data").exists()


def test_a_mistake_in_the_tiers_file_or_a_setting_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "tiers.yaml").write_text("tiers: {core: {requests_per_minute: 0}}\n")
    tiers = batchd("worker", cwd=tmp_path, BATCHD_TIERS="tiers.yaml")
    assert tiers.returncode == 2
    assert tiers.stderr.splitlines() == [
        "tiers.yaml: tiers.core.requests_per_minute: Input should be greater than or equal to 1"]
    setting = batchd("worker", cwd=tmp_path, BATCHD_CHUNK_LINES="lots")
    assert setting.returncode == 2
    assert setting.stderr.startswith("BATCHD_CHUNK_LINES: Input should be a valid integer")


def test_a_port_in_use_is_one_line_naming_who_holds_it(tmp_path: Path) -> None:
    (tmp_path / "models.yaml").write_text("models:\n  - id: x\n    engine: instant\n")
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = batchd("serve", "--models", "models.yaml", "--port", str(port), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"port {port} on 127.0.0.1 is already in use by process {os.getpid()} "
        f"({' '.join(_cmdline()[:4])}); choose another with --port or BATCHD_PORT")
    assert not (tmp_path / "batchd-data").exists()  # nothing was started or migrated


def _cmdline() -> list[str]:
    return Path(f"/proc/{os.getpid()}/cmdline").read_text().rstrip("\0").split("\0")


def test_the_first_install_says_it_compiles_before_it_does(tmp_path: Path) -> None:
    plan = subprocess.run(["make", "-n", "-C", str(REPO), "serve",
                           f"VENV={tmp_path / 'fresh-venv'}"],
                          capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, plan.stderr
    lines = plan.stdout.splitlines()
    notice = next(i for i, line in enumerate(lines) if "compiles llama.cpp" in line)
    install = next(i for i, line in enumerate(lines) if "pip install" in line)
    assert notice < install


def test_loading_the_model_leaves_no_unclosed_file_at_exit(tmp_path: Path) -> None:
    """llama-cpp-python opens /dev/null twice at import; `make test` used to end with two
    ResourceWarnings about them after pytest's summary."""
    script = ("from batchd.engines.llamacpp import LlamaCppEngine\n"
              "from batchd.engines.llamacpp_options import LlamaCppOptions\n"
              "LlamaCppEngine(LlamaCppOptions(n_ctx=256))\n")
    result = subprocess.run([sys.executable, "-X", "dev", "-c", script], capture_output=True,
                            text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ResourceWarning" not in result.stderr, result.stderr
