"""Typed configuration: pydantic models with a docstring under every field.

Configs come from defaults, then a TOML/YAML/JSON file, then `--set key=value` overrides, and are
validated in one place so that a wrong key or value ends in a single line naming the fix.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from interplab.errors import UserError, did_you_mean

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base for every configuration: unknown keys are errors; field docstrings become help."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, frozen=True)

    def with_overrides(self: C, overrides: dict[str, Any]) -> C:
        """A validated copy with `overrides` applied on top of this config."""
        return build(type(self), {**self.model_dump(), **overrides})

    def key(self) -> str:
        """Stable JSON text of the config, for cache keys and resume checks."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


def build(cls: type[C], values: dict[str, Any], where: str = "") -> C:
    """Validate `values` into `cls`, turning pydantic's report into one actionable line."""
    unknown = [k for k in values if k not in cls.model_fields]
    if unknown:
        k = unknown[0]
        raise UserError(
            f"unknown config key '{k}'{where}{did_you_mean(k, cls.model_fields)}; "
            f"valid keys: {', '.join(cls.model_fields)}"
        )
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "config"
        got = err.get("input")
        raise UserError(
            f"bad value for '{key}'{where}: {err['msg']} (got {got!r}); "
            f"see `interplab run NAME --help-config` for the expected type"
        ) from None


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """`["k=3", "names=[a,b]"]` -> `{"k": 3, ...}`; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set expects key=value, got '{item}'; for example --set seed=1")
        key, raw = item.split("=", 1)
        out[key.strip()] = _parse_value(raw.strip())
    return out


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        try:  # YAML accepts unquoted lists like [a, b] and plain words
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            return raw


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a config file (.toml, .yaml/.yml or .json) into a dict."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file '{p}' does not exist; pass the path of a .toml, .yaml or .json file")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise UserError(f"config file '{p}' must end in .toml, .yaml, .yml or .json")
    except (tomllib.TOMLDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise UserError(f"config file '{p}' does not parse: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file '{p}' must hold a mapping of key = value pairs")
    return data


def describe(cls: type[Config]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for every field, for `--help-config` and the docs."""
    rows = []
    for name, f in cls.model_fields.items():
        typ = getattr(f.annotation, "__name__", str(f.annotation)).replace("typing.", "")
        rows.append((name, typ, repr(f.default), (f.description or "").strip()))
    return rows
