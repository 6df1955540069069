"""The README's configuration examples are real: they parse and validate as batchd reads them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from batchd.config_problems import ConfigError
from batchd.engines.instant import InstantOptions
from batchd.engines.llamacpp_options import LlamaCppOptions
from batchd.engines.registry import ModelRegistry, ModelsFile
from batchd.engines.upstream import UpstreamOptions
from batchd.limits.tiers import TiersFile
from batchd.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
OPTIONS = {"llamacpp": LlamaCppOptions, "upstream": UpstreamOptions, "instant": InstantOptions}


def yaml_blocks() -> list[object]:
    return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", README, re.S)]


def test_the_models_file_example_validates_entry_by_entry() -> None:
    [models] = [b for b in yaml_blocks() if isinstance(b, dict) and "models" in b]
    parsed = ModelsFile.model_validate(models)
    assert {m.engine for m in parsed.models} == set(OPTIONS)
    try:
        ModelRegistry(parsed)  # checks every entry's engine options, loads nothing
    except ConfigError as exc:
        # The example names GGUF files on the reader's machine: that is all that may fail.
        assert all("model_path: " in line and line.endswith("does not exist")
                   for line in exc.problems), exc.problems


def test_the_tiers_file_example_validates() -> None:
    [tiers] = [b for b in yaml_blocks() if isinstance(b, dict) and "tiers" in b]
    assert TiersFile.model_validate(tiers).default_tier == "core"


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        assert f"`BATCHD_{name.upper()}`" in README, name


def test_plain_postgresql_urls_use_the_asyncpg_driver() -> None:
    for url in ("postgresql://u:p@h:5432/db", "postgres://u:p@h:5432/db"):
        resolved = Settings(database_url=url).resolved_database_url
        assert resolved == "postgresql+asyncpg://u:p@h:5432/db"
