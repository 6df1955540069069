"""Served models: read from the YAML models file, each bound to an engine by name.

Built-in engines register through the same table a plugin would use (`ENGINE_FACTORIES`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchd.engines.base import Engine

log = logging.getLogger(__name__)

# A factory gets the entry's engine options and its id; each engine module is imported only
# when a model uses it (llama_cpp is heavy).
EngineFactory = Callable[[dict[str, Any], str], Engine]


def _instant(options: dict[str, Any], model_id: str) -> Engine:
    from batchd.engines.instant import InstantEngine, InstantOptions

    return InstantEngine(InstantOptions.model_validate(options))


def _llamacpp(options: dict[str, Any], model_id: str) -> Engine:
    from batchd.engines.llamacpp import LlamaCppEngine, LlamaCppOptions

    return LlamaCppEngine(LlamaCppOptions.model_validate(options))


def _upstream(options: dict[str, Any], model_id: str) -> Engine:
    from batchd.engines.upstream import UpstreamEngine, UpstreamOptions

    return UpstreamEngine(UpstreamOptions.model_validate(options), model_id=model_id)


ENGINE_FACTORIES: dict[str, EngineFactory] = {
    "instant": _instant, "llamacpp": _llamacpp, "upstream": _upstream}

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"


class ModelConfig(BaseModel):
    """One entry of the models file. Keys other than these are the engine's own options."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    engine: str
    aliases: list[str] = Field(default_factory=list)
    owned_by: str = "batchd"

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig] = Field(min_length=1)


class ConfigError(Exception):
    """The models file is unreadable or wrong; the message says where."""


def load_models_file(path: Path | None) -> ModelsFile:
    if path is None:
        return ModelsFile(models=[ModelConfig(id=DEFAULT_MODEL_ID, engine="llamacpp")])
    try:
        raw = yaml.safe_load(path.read_text())
        return ModelsFile.model_validate(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read models file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"models file {path} is not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"models file {path} is invalid:\n{exc}") from exc


class ModelRegistry:
    """Maps every served id and alias to its model entry and (once started) its engine."""

    def __init__(self, config: ModelsFile, *, created: int = 0) -> None:
        self.config = config
        self.created = created
        self._by_name: dict[str, ModelConfig] = {}
        for entry in config.models:
            if entry.engine not in ENGINE_FACTORIES:
                known = ", ".join(sorted(ENGINE_FACTORIES))
                raise ConfigError(f"model {entry.id!r}: unknown engine {entry.engine!r} "
                                  f"(known: {known})")
            for name in (entry.id, *entry.aliases):
                if name in self._by_name:
                    raise ConfigError(f"model name {name!r} is listed twice")
                self._by_name[name] = entry
        self._engines: dict[str, Engine] = {}
        self._restart_lock = asyncio.Lock()

    def names(self) -> list[str]:
        """Every id and alias, in file order."""
        return list(self._by_name)

    def lookup(self, name: str) -> ModelConfig | None:
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def served_id(self, name: str) -> str | None:
        """The id of the model that serves `name` (an id or an alias)."""
        entry = self._by_name.get(name)
        return entry.id if entry else None

    async def start(self) -> None:
        """Build every engine (loading weights off the event loop)."""
        for entry in self.config.models:
            factory = ENGINE_FACTORIES[entry.engine]
            try:
                self._engines[entry.id] = await asyncio.to_thread(factory, entry.options, entry.id)
            except ValidationError as exc:
                raise ConfigError(f"model {entry.id!r}: bad engine options:\n{exc}") from exc

    def engine_for(self, name: str) -> Engine:
        entry = self._by_name[name]
        return self._engines[entry.id]

    async def restart(self, name: str, broken: Engine) -> None:
        """Replace a hung or crashed engine with a fresh instance. Several requests may
        report the same broken engine; only the first restarts it."""
        entry = self._by_name[name]
        async with self._restart_lock:
            if self._engines.get(entry.id) is not broken:
                return  # already replaced
            log.error("restarting the engine of model %r after a hang or crash", entry.id)
            factory = ENGINE_FACTORIES[entry.engine]
            self._engines[entry.id] = await asyncio.to_thread(factory, entry.options, entry.id)
        await broken.aclose()

    async def aclose(self) -> None:
        for engine in self._engines.values():
            await engine.aclose()
        self._engines.clear()
