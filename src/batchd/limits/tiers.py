"""Service tiers: what a key may do. Defaults follow kluster.ai's published plans; a YAML file
(`BATCHD_TIERS`) can replace them. `null` means unlimited."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from batchd.config_problems import ConfigError, key_problems, read_yaml

GIB = 1024 * 1024 * 1024


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=1)
    """API requests per minute per key (all /v1 endpoints)."""
    max_batch_requests: int | None = Field(default=None, ge=1)
    """Request lines in one batch."""
    max_concurrent_batches: int | None = Field(default=None, ge=1)
    """Batches of one owner that are not yet finished."""
    max_upload_bytes: int | None = Field(default=None, ge=1)
    """Largest file upload."""
    enqueued_tokens_per_model: int | None = Field(default=None, ge=1)
    """Prompt + maximum output tokens of one owner's unfinished batches, per model."""


def batch_request_limit(tier: Tier, server_limit: int) -> int:
    """The most requests a batch of `tier` may hold: the server's limit, or the tier's if
    lower (beyond it, a batch could never run)."""
    return min(server_limit, tier.max_batch_requests or server_limit)


class TiersFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_tier: str = "core"
    tiers: dict[str, Tier]

    def resolve(self, name: str | None) -> tuple[str, Tier]:
        """The tier called `name`; the default tier for none, or for a name the file no
        longer has (it changed under an existing key or batch: least privilege)."""
        if name is None or name not in self.tiers:
            name = self.default_tier
        return name, self.tiers[name]


DEFAULT_TIERS = TiersFile(
    default_tier="core",
    tiers={
        "trial": Tier(requests_per_minute=30, max_batch_requests=1_000,
                      max_concurrent_batches=20, max_upload_bytes=100 * 1024 * 1024,
                      enqueued_tokens_per_model=5_000_000),
        "core": Tier(requests_per_minute=600, max_batch_requests=100_000,
                     max_concurrent_batches=100, max_upload_bytes=GIB // 2,
                     enqueued_tokens_per_model=500_000_000),
        "scale": Tier(requests_per_minute=1_200, max_batch_requests=500_000,
                      max_concurrent_batches=100, max_upload_bytes=GIB // 2,
                      enqueued_tokens_per_model=5_000_000_000),
        "enterprise": Tier(max_concurrent_batches=100),
    },
)

ADMIN_TIER = "enterprise"


def load_tiers(path: Path | None) -> TiersFile:
    if path is None:
        return DEFAULT_TIERS
    try:
        loaded = TiersFile.model_validate(read_yaml(path))
    except ConfigError as exc:
        raise exc.within(str(path)) from None
    except ValidationError as exc:
        raise ConfigError(key_problems(exc)).within(str(path)) from exc
    if loaded.default_tier not in loaded.tiers:
        raise ConfigError([f"{path}: default_tier {loaded.default_tier!r} is not one of its "
                           f"tiers ({', '.join(loaded.tiers)})"])
    return loaded
