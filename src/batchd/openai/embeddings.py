"""The OpenAI embeddings wire format (`/v1/embeddings`)."""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, StrictInt, StrictStr

from batchd.errors import InvalidRequest
from batchd.openai.base import OpenAIBaseModel

# OpenAI's limits: 2,048 inputs per request, none of them empty.
MAX_INPUTS = 2048


@dataclass(frozen=True, kw_only=True)
class EmbeddingInputs:
    """What an engine embeds: texts or token-id lists (never both), and the length wanted."""

    texts: list[str] | None = None
    tokens: list[list[int]] | None = None
    dimensions: int | None = None

    @property
    def count(self) -> int:
        return len(self.texts if self.texts is not None else self.tokens or [])


class EmbeddingRequest(OpenAIBaseModel):
    model: StrictStr
    # A string, a list of strings, token ids, or a list of token-id lists.
    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(default=None, ge=1)
    user: StrictStr | None = None

    def inputs(self) -> EmbeddingInputs:
        """The inputs, normalised, once what OpenAI refuses is refused."""
        raw = self.input
        if isinstance(raw, str):
            raw = [raw]
        if not raw:
            raise InvalidRequest("'$.input' is invalid: it must not be empty.",
                                 code="invalid_value", param="input")
        if len(raw) > MAX_INPUTS:
            raise InvalidRequest(f"'$.input' is invalid: at most {MAX_INPUTS} inputs are "
                                 "allowed per request.", code="invalid_value", param="input")
        if all(isinstance(item, str) for item in raw):
            texts = [str(item) for item in raw]
            for i, text in enumerate(texts):
                if not text:
                    raise InvalidRequest(f"'$.input[{i}]' is invalid: an input must not be an "
                                         "empty string.", code="invalid_value",
                                         param=f"input[{i}]")
            return EmbeddingInputs(texts=texts, dimensions=self.dimensions)
        lists: list[list[int]] = ([list(raw)] if all(isinstance(t, int) for t in raw)  # type: ignore[arg-type]
                                  else [list(item) for item in raw])  # type: ignore[arg-type]
        for i, ids in enumerate(lists):
            if not ids or min(ids) < 0:
                raise InvalidRequest(f"'$.input[{i}]' is invalid: token id lists must be "
                                     "non-empty and hold non-negative ids.",
                                     code="invalid_value", param=f"input[{i}]")
        return EmbeddingInputs(tokens=lists, dimensions=self.dimensions)


def shorten(vector: list[float], dimensions: int | None) -> list[float]:
    """The first `dimensions` components, at unit length again (as Matryoshka-trained models
    are meant to be shortened); the whole vector, normalised, for None."""
    if dimensions is not None:
        vector = vector[:dimensions]
    return normalized(vector)


def normalized(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else list(vector)


def encode(vector: list[float], encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":  # little-endian float32, as OpenAI sends and the SDK reads
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector


def embedding_list_object(*, model: str, vectors: list[list[float]], encoding_format: str,
                          prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(v, encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
