"""Mistakes in configuration said the way a person fixes them: one line each, naming the file,
the model and the key (`models.yaml: model "x": model_path: /nope.gguf does not exist`)."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails


class ConfigError(Exception):
    """Configuration that cannot be used; `problems` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems

    def within(self, prefix: str) -> ConfigError:
        """The same problems, each line led by where they are (a file's name)."""
        return ConfigError([f"{prefix}: {line}" for line in self.problems])


def key_problems(errors: ValidationError | list[ErrorDetails]) -> list[str]:
    """One line per pydantic error: the key it is about, then what is wrong with it."""
    lines = []
    for error in errors.errors() if isinstance(errors, ValidationError) else errors:
        key = ".".join(str(part) for part in error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            lines.append(f"unknown key {key!r}")
        elif kind == "missing":
            lines.append(f"missing key {key!r}")
        else:
            message = str(error["msg"]).removeprefix("Value error, ")
            lines.append(f"{key}: {message}" if key else message)
    return lines


def read_yaml(path: Path) -> object:
    """A YAML file's content; unreadable or broken YAML is a one-line ConfigError (which the
    caller leads with the file's name)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([f"cannot read it: {exc.strerror}"]) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"line {mark.line + 1}, column {mark.column + 1}: "
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError([f"not valid YAML: {where}{problem}"]) from exc
