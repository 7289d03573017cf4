"""Reading the YAML files operators edit (SKU profiles, guardrails policy) with errors that say
which file, which field and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def read_yaml(path: Path, what: str, error: type[ValueError]) -> Any:
    """The parsed file, or `error` naming `what`, the path and the problem."""
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from exc


def validation_problems(exc: ValidationError) -> list[str]:
    """One line per invalid field: its dotted path, the rule it broke and the value it had."""
    lines = []
    for problem in exc.errors():
        where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        got = problem.get("input")
        shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
        lines.append(f"{where}: {problem['msg']}{shown}")
    return lines
