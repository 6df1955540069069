"""batchd: a self-hosted, OpenAI-compatible Batch API for open LLMs."""

__version__ = "0.1.0"
