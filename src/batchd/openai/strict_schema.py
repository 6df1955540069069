"""OpenAI's rules for a schema with `strict: true` (structured outputs and strict function
tools): the root is an object, every object names all its properties in `required` and
allows no others (`additionalProperties: false`), at most 10 levels of nesting. A schema that
breaks them is a 400 naming the place, as OpenAI answers, whatever engine would run it."""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 10
# Schemas inside schemas, definitions included (which do not nest the answer, but could
# otherwise nest without end).
MAX_LEVELS = 4 * MAX_DEPTH
# Keywords whose values are schemas, or maps or lists of schemas.
_SCHEMA_KEYS = ("items", "additionalItems", "not", "if", "then", "else", "contains")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "allOf", "oneOf", "prefixItems")


class StrictSchemaError(ValueError):
    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where  # the parameter path of the offending schema


def check_strict(schema: Any, where: str) -> None:
    """Raise StrictSchemaError for the first rule `schema` (found at `where`) breaks."""
    if not isinstance(schema, dict):
        raise StrictSchemaError(where, "a schema must be a JSON object.")
    if schema.get("type") != "object" or "anyOf" in schema:
        raise StrictSchemaError(where, "the root schema must be an object ('type': "
                                       "'object'), not 'anyOf'.")
    _check(schema, where, depth=0, level=0)


def _check(schema: Any, where: str, *, depth: int, level: int) -> None:
    """`depth`: how deep the answer nests here; `level`: how deep the schema does."""
    if isinstance(schema, bool):
        return
    if not isinstance(schema, dict):
        raise StrictSchemaError(where, "a schema must be a JSON object.")
    if depth > MAX_DEPTH or level > MAX_LEVELS:
        raise StrictSchemaError(where, f"schemas may nest at most {MAX_DEPTH} levels deep.")
    for key in _SCHEMA_MAPS:
        if key in schema and not isinstance(schema[key], dict):
            raise StrictSchemaError(f"{where}.{key}", f"'{key}' must be an object.")
    for key in _SCHEMA_LISTS:
        if key in schema and not isinstance(schema[key], list):
            raise StrictSchemaError(f"{where}.{key}", f"'{key}' must be an array.")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise StrictSchemaError(f"{where}.required", "'required' must be an array of strings.")
    if _is_object(schema):
        properties = schema.get("properties") or {}
        if schema.get("additionalProperties") is not False:
            raise StrictSchemaError(where, "'additionalProperties' is required to be supplied "
                                           "and to be false.")
        missing = [key for key in properties if key not in required]
        if missing:
            raise StrictSchemaError(where, "'required' is required to be supplied and to be an "
                                           "array including every key in properties. Missing "
                                           f"'{missing[0]}'.")
    for key in _SCHEMA_KEYS:
        if key in schema:
            _check(schema[key], f"{where}.{key}", depth=depth + 1, level=level + 1)
    for key in _SCHEMA_MAPS:
        members = schema.get(key)
        if isinstance(members, dict):
            # Definitions are not a level of the answer's nesting.
            deeper = depth if key in ("$defs", "definitions") else depth + 1
            for name, member in members.items():
                _check(member, f"{where}.{key}.{name}", depth=deeper, level=level + 1)
    for key in _SCHEMA_LISTS:
        members = schema.get(key)
        if isinstance(members, list):
            for i, member in enumerate(members):
                _check(member, f"{where}.{key}[{i}]", depth=depth + 1, level=level + 1)


def _is_object(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "object" or (isinstance(kind, list) and "object" in kind) or (
        kind is None and "properties" in schema)
