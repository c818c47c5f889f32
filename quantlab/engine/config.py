"""Experiment configuration: YAML files merged in layers, checked against a schema.

The schema has two parts. The merged defaults (cfg/defaults.yaml + the topology's
`defaults:` section) give every key and its type: a profile or a `--set` override may only
name keys that exist there, with a value of a compatible type, which catches the typo that
would otherwise silently train with the default. cfg/schema.yaml (+ the topology's
`schema:` section) gives allowed values and ranges, so that `training.batch_size=0` or an
unknown optimizer stops the run before anything is created.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from quantlab.engine.errors import ConfigError

Config = dict[str, Any]
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def load_yaml(path: Path) -> dict:
    """Read a YAML mapping, naming the file in any error."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc.__class__.__name__}: {exc})".replace("\n", " "))
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _compatible(default: Any, value: Any) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
    if isinstance(default, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return isinstance(value, type(default))


def merge_checked(base: Config, override: dict, source: str, prefix: str = "") -> Config:
    """Return `base` updated by `override`; every key of `override` must exist in `base`.

    Mappings whose default is empty (`{}`) are open: any key may be added there (used for
    free-form sections such as per-layer options).
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in out:
            known = ", ".join(sorted(map(str, out))) or "(none)"
            raise ConfigError(f"{source}: unknown config key '{dotted}' (known keys here: {known})")
        default = out[key]
        if isinstance(default, dict) and default and isinstance(value, dict):
            out[key] = merge_checked(default, value, source, dotted + ".")
        elif not _compatible(default, value):
            raise ConfigError(
                f"{source}: config key '{dotted}' expects {type(default).__name__}, "
                f"got {type(value).__name__} ({value!r})")
        else:
            out[key] = copy.deepcopy(value)
    return out


def _numbers(value: Any) -> Any:
    """`value` with exponent notation read as numbers at any depth: YAML 1.1 reads `1e-3`
    and `1.0e12` as strings, where users mean numbers."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def parse_override(text: str) -> dict:
    """Turn `a.b.c=value` into {'a': {'b': {'c': value}}}, value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"--set {text!r}: the value of '{key}' is not valid YAML ({problem}); "
                          "quote it to pass a string")
    nested: dict = _numbers(value)
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


RULES = {"choices", "min", "max", "above", "overlays"}


def _layers(defaults_file: Path, topology_file: Path) -> tuple[Config, dict, dict[str, dict]]:
    """The global defaults with the topology's `defaults:` laid over them, the topology's
    profiles, and the value schema: `schema.yaml` beside the defaults, then the topology's
    `schema:` section, as {dotted key: {choices | min | max | above | overlays}}."""
    base = load_yaml(defaults_file)
    topo = load_yaml(topology_file)
    unknown = set(topo) - {"defaults", "profiles", "schema"}
    if unknown:
        raise ConfigError(f"{topology_file}: unknown top-level key(s) {sorted(unknown)}; "
                          "expected 'defaults', 'profiles' and 'schema'")
    topo_defaults = topo.get("defaults") or {}
    for key in set(base) & set(topo_defaults):
        if not (isinstance(base[key], dict) and isinstance(topo_defaults[key], dict)):
            raise ConfigError(f"{topology_file}: key '{key}' redefines a global default")
    cfg = copy.deepcopy(base)
    for key, value in topo_defaults.items():
        if key in cfg:
            cfg[key] = merge_checked(cfg[key], value, str(topology_file), key + ".")
        else:
            cfg[key] = copy.deepcopy(value)
    schema = {**load_yaml(defaults_file.with_name("schema.yaml")), **(topo.get("schema") or {})}
    for key, rule in schema.items():
        if not isinstance(rule, dict) or not set(rule) <= RULES:
            raise ConfigError(f"schema of '{key}': expected a mapping of {sorted(RULES)}, got {rule!r}")
    return cfg, topo.get("profiles") or {}, schema


_MISSING = object()


def _lookup(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _value_error(key: str, value: Any, rule: dict) -> str | None:
    """Why `value` breaks `rule` (None when it does not); lists are checked item by item."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return next((e for e in (_value_error(key, v, rule) for v in value) if e), None)
    if "choices" in rule and value not in rule["choices"]:
        return f"config key '{key}': {value!r} is not one of {rule['choices']}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if "min" in rule and value < rule["min"]:
        return f"config key '{key}' must be at least {rule['min']}, got {value}"
    if "above" in rule and value <= rule["above"]:
        return f"config key '{key}' must be above {rule['above']}, got {value}"
    if "max" in rule and value > rule["max"]:
        return f"config key '{key}' must be at most {rule['max']}, got {value}"
    return None


def check_values(cfg: Config, schema: dict[str, dict], prefix: str = "", partial: bool = False) -> Config:
    """Raise a ConfigError naming the first key whose value the schema does not allow.

    A mapping with `overlays: S` (quantize.child_training over training) holds some keys of
    section S: those present are checked with S's rules. `partial` skips absent keys."""
    for key, rule in schema.items():
        value = _lookup(cfg, key)
        if value is _MISSING:
            if partial:
                continue
            raise ConfigError(f"schema names config key '{prefix}{key}', which the configuration does not have")
        if "overlays" in rule:
            section = rule["overlays"] + "."
            check_values(value, {k[len(section):]: r for k, r in schema.items() if k.startswith(section)},
                         f"{prefix}{key}.", partial=True)
            continue
        error = _value_error(prefix + key, value, rule)
        if error:
            raise ConfigError(error)
    return cfg


def build_config(defaults_file: Path, topology_file: Path, profile: str,
                 overrides: list[str]) -> Config:
    """Resolve the configuration of a new experiment: defaults, topology, profile, --set."""
    cfg, profiles, schema = _layers(defaults_file, topology_file)
    if profile not in profiles:
        raise ConfigError(f"{topology_file}: unknown profile '{profile}' "
                          f"(available: {', '.join(sorted(profiles)) or 'none'})")
    cfg = merge_checked(cfg, profiles[profile] or {}, f"{topology_file} profile '{profile}'")
    cfg = apply_overrides(cfg, overrides)
    check_values(cfg, schema)
    cfg["profile"] = profile
    return cfg


def resume_config(defaults_file: Path, topology_file: Path, saved: Config, source: Path,
                  overrides: list[str]) -> Config:
    """The configuration of a continued experiment: its saved `config.yaml` laid over
    today's defaults (keys added since take their default), then --set, checked like a
    new one."""
    saved = dict(saved)
    profile = saved.pop("profile", None)
    defaults, _, schema = _layers(defaults_file, topology_file)
    cfg = apply_overrides(merge_checked(defaults, saved, str(source)), overrides)
    check_values(cfg, schema)
    cfg["profile"] = profile
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `--set key=value` overrides, each checked against the schema."""
    for text in overrides:
        cfg = merge_checked(cfg, parse_override(text), f"--set {text}")
    return cfg


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def child_config(cfg: Config, init: str, rules: list[dict], epochs: int) -> Config:
    """The configuration of a QAT child run a search launches (an MQAT stage or probe, a
    uniform or HAWQ-V3 baseline): start from `init`, quantize by `rules`, train `epochs`,
    with `quantize.child_training` laid over `training` (checked against its keys)."""
    child = copy.deepcopy(cfg)
    child["quantize"]["init"] = init
    child["quantize"]["rules"] = rules
    child["training"] = merge_checked(cfg["training"], cfg["quantize"]["child_training"],
                                      "config key 'quantize.child_training'", "training.")
    child["training"]["epochs"] = epochs
    return child
