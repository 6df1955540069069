"""Constrained decoding for the llama.cpp engine: what a request asks its answer to be (a JSON
object, one JSON schema, calls of its tools) as an llguidance grammar, compiled once per
distinct grammar for the model's vocabulary, and one matcher per sequence.

Why llguidance and not llama.cpp's own grammar sampler: llguidance computes a token mask in
tens of microseconds (a lexer in front of an Earley parser, over a token trie), for a whole
decode step's sequences at once, and converts JSON schemas itself with the JSON-schema
keywords checked (an unknown `format` or a dangling `$ref` is an error, not a silently looser
grammar). llama.cpp's GBNF sampler checks every vocabulary entry against its stack of rules at
every step; `bench/structured.py` prints both on the same schemas and tokens.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

from batchd.engines.base import EngineRequestError

# Answers are compact JSON (`{"a":1}`): no whitespace between tokens, so a small model cannot
# fill its token budget with newlines and indentation instead of finishing the object.
COMPACT: JsonCompileOptions = {"whitespace_flexible": False}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
CACHED_GRAMMARS = 256


@dataclass(frozen=True)
class Constraint:
    """A grammar the answer must follow, and the request parameter it comes from (named by
    the error when the grammar cannot be honoured)."""

    grammar: str
    param: str

    @property
    def key(self) -> str:
        return hashlib.blake2b(self.grammar.encode(), digest_size=16).hexdigest()


def json_constraint(schema: dict[str, Any] | None, param: str) -> Constraint:
    """A JSON value that follows `schema` (None: any JSON object)."""
    import llguidance

    _no_options(schema, param)
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(
            ANY_OBJECT if schema is None else schema, overrides=COMPACT)
    except (ValueError, TypeError) as exc:
        raise _cannot(param, exc) from exc
    return Constraint(grammar=grammar, param=param)


def call_schema(name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
    """One call of function `name` as the model writes it: `{"name":..,"arguments":{..}}`.
    The parameters' definitions move to this schema's root, where their `$ref`s
    (`#/$defs/…`, as pydantic writes them) point."""
    arguments = dict(parameters or ANY_OBJECT)
    schema: dict[str, Any] = {
        "type": "object", "properties": {"name": {"const": name}, "arguments": arguments},
        "required": ["name", "arguments"], "additionalProperties": False,
        "x-guidance": COMPACT}
    for key in ("$defs", "definitions"):
        if key in arguments:
            schema[key] = arguments.pop(key)
    return schema


def calls_constraint(functions: list[tuple[str, dict[str, Any] | None]], *, several: bool,
                     or_text: bool, answer: dict[str, Any] | None = None) -> Constraint:
    """Calls of the given functions, one JSON object per line (`several`: one or more, else
    exactly one); `or_text`: a plain answer instead (text whose first character, after a
    little whitespace, is not `{`), or, with `answer`, a JSON value following that schema.
    A little whitespace may come first (a reasoning model's after `</think>`), never more."""
    import llguidance

    for i, (_, parameters) in enumerate(functions):
        _no_options(parameters, f"tools[{i}].function.parameters")
    rules = [f"call_{i}: %json {json.dumps(call_schema(name, parameters))}"
             for i, (name, parameters) in enumerate(functions)]
    calls = 'LEAD? call ("\\n" call)*' if several else "LEAD? call"
    lines = [f"call: {' | '.join(f'call_{i}' for i in range(len(functions)))}", *rules,
             r'LEAD: /[ \t\r\n]{1,4}/']
    if answer is not None:
        _no_options(answer, "response_format.json_schema.schema")
        start = f"LEAD? answer | {calls}"
        lines.append(f"answer: %json {json.dumps({**answer, 'x-guidance': COMPACT})}")
    elif or_text:
        start = f"TEXT | {calls}"
        lines.append(r"TEXT: /[ \t\r\n]{0,4}[^{ \t\r\n][\s\S]*/")
    else:
        start = calls
    try:
        grammar = llguidance.LLMatcher.grammar_from_lark("\n".join([f"start: {start}", *lines]))
    except (ValueError, TypeError) as exc:
        raise _cannot("tools", exc) from exc
    return Constraint(grammar=grammar, param="tools")


def _no_options(schema: Any, param: str) -> None:
    """A schema may not set llguidance's own options (`x-guidance`): they could make the
    answer lenient about the schema, or not JSON at all."""
    if isinstance(schema, dict) and "x-guidance" in schema:
        raise EngineRequestError(f"Invalid '{param}.x-guidance': grammar options are not "
                                 "accepted in schemas.", code="invalid_value",
                                 param=f"{param}.x-guidance")


def _cannot(param: str, exc: Exception) -> EngineRequestError:
    return EngineRequestError(f"Invalid '{param}': this schema cannot be enforced: {exc}",
                              code="invalid_value", param=param)


class Grammars:
    """Compiled grammars for one model's vocabulary: each distinct grammar is checked and
    compiled once (kept while among the last `CACHED_GRAMMARS` used) and every sequence
    gets its own copy of the compiled matcher (a copy costs microseconds)."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._compiled: OrderedDict[str, Any] = OrderedDict()

    def tokenizer(self) -> Any:
        """llguidance's view of the vocabulary: built on first use (about a second)."""
        with self._lock:
            if self._tokenizer is None:
                import llguidance.llamacpp

                with warnings.catch_warnings():
                    # it reads token attributes through a binding llama-cpp-python renamed
                    warnings.simplefilter("ignore", DeprecationWarning)
                    self._tokenizer = llguidance.llamacpp.lltokenizer_from_vocab(
                        self._vocab, eos_token=self._end_tokens())
            return self._tokenizer

    def _end_tokens(self) -> list[int]:
        """Every token that ends a generation (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`
        besides `</s>`), so that a finished grammar can end on whichever the model writes."""
        import llama_cpp

        count = llama_cpp.llama_vocab_n_tokens(self._vocab)
        return [t for t in range(count) if llama_cpp.llama_vocab_is_eog(self._vocab, t)]

    def matcher(self, constraint: Constraint) -> Any:
        """A fresh matcher for `constraint`, or a 400 naming its parameter if the grammar
        cannot be honoured."""
        import llguidance

        key = constraint.key
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is not None:
                self._compiled.move_to_end(key)
                return compiled.deep_copy()
        tokenizer = self.tokenizer()
        problem = llguidance.LLMatcher.validate_grammar(constraint.grammar, tokenizer)
        if problem:
            raise EngineRequestError(
                f"Invalid '{constraint.param}': this schema cannot be enforced: {problem}",
                code="invalid_value", param=constraint.param)
        compiled = llguidance.LLMatcher(tokenizer, constraint.grammar, log_level=0)
        if compiled.is_error():
            raise EngineRequestError(
                f"Invalid '{constraint.param}': this schema cannot be enforced: "
                f"{compiled.get_error()}", code="invalid_value", param=constraint.param)
        with self._lock:
            self._compiled[key] = compiled
            while len(self._compiled) > CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        return compiled.deep_copy()


class Masks:
    """The allowed-token masks of one decode step's constrained sequences, computed together
    (llguidance spreads them over its threads) and applied to their logits in place."""

    def __init__(self, n_vocab: int, slots: int) -> None:
        import llguidance
        import numpy as np

        self.n_vocab = n_vocab
        self._words = (n_vocab + 31) // 32
        self._bits = np.zeros((slots, self._words), dtype=np.int32)
        self._executor = llguidance.LLExecutor()

    def apply(self, rows: list[tuple[Any, Any]]) -> None:
        """`rows`: (matcher, logits pointer) for each sequence sampled this step."""
        import numpy as np

        if not rows:
            return
        bits = self._bits
        self._executor.unsafe_compute_mask_ptr(
            [(matcher, k) for k, (matcher, _) in enumerate(rows)], bits.ctypes.data,
            self._words * 4, len(bits))
        allowed = np.unpackbits(bits[:len(rows)].view(np.uint8), axis=1,
                                bitorder="little")[:, :self.n_vocab]
        for k, (_, pointer) in enumerate(rows):
            logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
            logits[allowed[k] == 0] = -np.inf
