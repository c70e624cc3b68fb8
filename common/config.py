"""YAML configs validated by pydantic, shared by the curation and training configs: unknown keys are
errors, `--set key.sub=value` overrides, and every error names the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from vlmforge.common.errors import ConfigError

ModelT = TypeVar("ModelT", bound=BaseModel)


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _format_errors(err: ValidationError, label: str) -> str:
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        lines.append(f"  {field}: {msg}")
    return f"invalid {label}:\n" + "\n".join(lines)


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {p} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


def load_yaml_model(
    model: type[ModelT], path: str | Path | None, overrides: list[str] | None = None, label: str = "config"
) -> ModelT:
    """Load YAML into the pydantic `model`, after `key.sub=value` overrides; ConfigError names the field."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config {p} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"config {p} must be a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        _apply_override(data, item)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, label)) from None
