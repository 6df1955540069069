"""Served models: read from the YAML models file, each bound to an engine by name.

Every entry is checked before any engine starts: all mistakes are reported at once, one line
each, naming the model and the key.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchd.config_problems import ConfigError, key_problems, read_yaml
from batchd.engines.base import Capability, Engine
from batchd.errors import NotFound

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EngineKind:
    """An engine's options model and how to build it from validated options and a model id."""

    options: type[BaseModel]
    build: Callable[[Any, str, frozenset[str]], Engine]  # (options, model id, serves)


# Each engine module is imported only when a model uses it (llama_cpp is heavy).
def _instant() -> EngineKind:
    from batchd.engines.instant import InstantEngine, InstantOptions

    return EngineKind(InstantOptions, lambda options, _id, _serves: InstantEngine(options))


def _llamacpp() -> EngineKind:
    from batchd.engines.llamacpp import LlamaCppEngine
    from batchd.engines.llamacpp_options import LlamaCppOptions

    return EngineKind(LlamaCppOptions,
                      lambda options, _id, serves: LlamaCppEngine(options, serves=serves))


def _upstream() -> EngineKind:
    from batchd.engines.upstream import UpstreamEngine, UpstreamOptions

    return EngineKind(UpstreamOptions,
                      lambda options, model_id, _serves: UpstreamEngine(options,
                                                                        model_id=model_id))


ENGINES: dict[str, Callable[[], EngineKind]] = {
    "instant": _instant, "llamacpp": _llamacpp, "upstream": _upstream}

DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"


class Prices(BaseModel):
    """What a model's tokens cost, per million (an internal price for chargeback: the
    Costs API multiplies usage by it)."""

    model_config = ConfigDict(extra="forbid")

    currency: str = Field(default="usd", min_length=1, max_length=10)
    input: float = Field(ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    """Prompt tokens served from the prefix cache (default: the input price)."""
    output: float = Field(default=0.0, ge=0)
    batch_discount: float = Field(default=0.5, ge=0, le=1)
    """The share taken off batch requests' tokens (hosted services give 0.5)."""

    def cost(self, *, input_tokens: int, cached_tokens: int, output_tokens: int,
             batch: bool) -> dict[str, float]:
        """The cost of that usage by line item: input, cached input, output."""
        share = (1 - self.batch_discount) if batch else 1.0
        cached = self.input if self.cached_input is None else self.cached_input
        return {"input": (input_tokens - cached_tokens) * self.input * share / 1e6,
                "cached input": cached_tokens * cached * share / 1e6,
                "output": output_tokens * self.output * share / 1e6}


class ModelConfig(BaseModel):
    """One entry of the models file. Keys other than these are the engine's own options."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1)
    engine: str
    aliases: list[str] = Field(default_factory=list)
    owned_by: str = "batchd"
    serves: list[Capability] = Field(default_factory=lambda: list[Capability](["chat"]),
                                     min_length=1)
    """What the model is for: `chat` (/v1/chat/completions, /v1/responses, /v1/completions),
    `embeddings` (/v1/embeddings), or both."""
    prices: Prices | None = None

    @functools.cached_property
    def capabilities(self) -> frozenset[str]:  # once: batch validation asks for every line
        return frozenset(self.serves)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig] = Field(min_length=1)


def load_registry(path: Path | None, *, created: int = 0) -> ModelRegistry:
    """The registry of a models file (None: the built-in default), every entry checked; a
    ConfigError's lines name the file."""
    try:
        return ModelRegistry(load_models_file(path), created=created)
    except ConfigError as exc:
        raise exc.within(str(path) if path else "built-in models") from None


def load_models_file(path: Path | None) -> ModelsFile:
    """The models file, its entries checked one by one so that every broken entry is
    reported (not only the first)."""
    if path is None:
        return ModelsFile(models=[ModelConfig(id=DEFAULT_MODEL_ID, engine="llamacpp")])
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("models"), list) or \
            not raw["models"]:
        raise ConfigError(["expected a mapping with a non-empty list under 'models:'"])
    problems = [f"unknown key {key!r}" for key in raw if key != "models"]
    entries = []
    for n, entry in enumerate(raw["models"]):
        try:
            entries.append(ModelConfig.model_validate(entry))
        except ValidationError as exc:
            name = entry.get("id") if isinstance(entry, dict) else None
            where = f"model {name!r}" if isinstance(name, str) else f"models[{n}]"
            problems += [f"{where}: {line}" for line in key_problems(exc)]
    if problems and entries:  # the well-formed entries' own mistakes, in the same report
        try:
            ModelRegistry(ModelsFile(models=entries))
        except ConfigError as exc:
            problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return ModelsFile(models=entries)


class ModelRegistry:
    """Maps every served id and alias to its model entry and (once started) its engine."""

    def __init__(self, config: ModelsFile, *, created: int = 0) -> None:
        """Checks every entry (engine, names, engine options) and raises one ConfigError
        listing all that is wrong; no engine is started here."""
        self.config = config
        self.created = created
        self._by_name: dict[str, ModelConfig] = {}
        self._kinds: dict[str, EngineKind] = {}
        self._options: dict[str, BaseModel] = {}
        problems: list[str] = []
        for entry in config.models:
            where = f"model {entry.id!r}"
            for name in (entry.id, *entry.aliases):
                if name in self._by_name:
                    problems.append(f"{where}: the name {name!r} is listed twice")
                self._by_name[name] = entry
            kind = ENGINES.get(entry.engine)
            if kind is None:
                problems.append(f"{where}: unknown engine {entry.engine!r} "
                                f"(known: {', '.join(sorted(ENGINES))})")
                continue
            self._kinds[entry.id] = kind()
            try:
                self._options[entry.id] = self._kinds[entry.id].options.model_validate(
                    entry.options)
            except ValidationError as exc:
                problems += [f"{where}: {line}" for line in key_problems(exc)]
        if problems:
            raise ConfigError(problems)
        self._engines: dict[str, Engine] = {}
        self._restart_lock = asyncio.Lock()

    def names(self) -> list[str]:
        """Every id and alias, in file order."""
        return list(self._by_name)

    def served_ids(self) -> list[str]:
        """The id of every served model (no aliases), in file order."""
        return [entry.id for entry in self.config.models]

    def entry(self, name: str) -> ModelConfig:
        """The model called `name` (an id or an alias); OpenAI's 404 if none is served."""
        found = self._by_name.get(name)
        if found is None:
            raise NotFound(f"The model '{name}' does not exist or you do not have access to "
                           "it.", code="model_not_found", param="model")
        return found

    def prices(self, name: str) -> Prices | None:
        """The prices of the model called `name` (an id or an alias), if it has any."""
        entry = self._by_name.get(name)
        return entry.prices if entry is not None else None

    def served_id(self, name: str) -> str | None:
        """The id of the model that serves `name` (an id or an alias)."""
        entry = self._by_name.get(name)
        return entry.id if entry else None

    async def start(self) -> None:
        """Build every engine (loading weights off the event loop)."""
        for entry in self.config.models:
            self._engines[entry.id] = await asyncio.to_thread(self._build, entry.id)

    def _build(self, model_id: str) -> Engine:
        entry = self._by_name[model_id]
        return self._kinds[model_id].build(self._options[model_id], model_id,
                                           entry.capabilities)

    def capabilities(self, name: str) -> frozenset[str]:
        """What the model called `name` (an id or an alias) is for; empty if unknown."""
        entry = self._by_name.get(name)
        return entry.capabilities if entry is not None else frozenset()

    def engine_for(self, name: str) -> Engine:
        entry = self._by_name[name]
        return self._engines[entry.id]

    def engine_of_id(self, model_id: str) -> Engine:
        """The engine of the model with this id (not an alias): the current one, after a
        restart too."""
        return self._engines[model_id]

    async def restart(self, name: str, broken: Engine) -> None:
        """Replace a hung or crashed engine with a fresh instance. Several requests may
        report the same broken engine; only the first restarts it."""
        entry = self._by_name[name]
        async with self._restart_lock:
            if self._engines.get(entry.id) is not broken:
                return  # already replaced
            log.error("restarting the engine of model %r after a hang or crash", entry.id)
            self._engines[entry.id] = await asyncio.to_thread(self._build, entry.id)
        await broken.aclose()

    async def aclose(self) -> None:
        for engine in self._engines.values():
            await engine.aclose()
        self._engines.clear()
