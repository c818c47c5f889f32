"""Experiment configuration: YAML files merged in layers, checked against a schema.

The schema is the merged defaults themselves (cfg/defaults.yaml + the topology's
`defaults:` section): a profile or a `--set` override may only name keys that exist there,
with a value of a compatible type. This catches the typo that would otherwise silently
train with the default.
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


def parse_override(text: str) -> dict:
    """Turn `a.b.c=value` into {'a': {'b': {'c': value}}}, value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.sub=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 as a string; users mean a number
    nested: dict = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def build_config(defaults_file: Path, topology_file: Path, profile: str,
                 overrides: list[str]) -> Config:
    """Resolve the configuration of a new experiment: defaults, topology, profile, --set."""
    base = load_yaml(defaults_file)
    topo = load_yaml(topology_file)
    unknown = set(topo) - {"defaults", "profiles"}
    if unknown:
        raise ConfigError(f"{topology_file}: unknown top-level key(s) {sorted(unknown)}; "
                          "expected 'defaults' and 'profiles'")
    topo_defaults = topo.get("defaults") or {}
    clash = set(base) & set(topo_defaults)
    for key in clash:
        if not (isinstance(base[key], dict) and isinstance(topo_defaults[key], dict)):
            raise ConfigError(f"{topology_file}: key '{key}' redefines a global default")
    cfg = copy.deepcopy(base)
    for key, value in topo_defaults.items():
        if key in cfg:
            cfg[key] = merge_checked(cfg[key], value, str(topology_file), key + ".")
        else:
            cfg[key] = copy.deepcopy(value)
    profiles = topo.get("profiles") or {}
    if profile not in profiles:
        raise ConfigError(f"{topology_file}: unknown profile '{profile}' "
                          f"(available: {', '.join(sorted(profiles)) or 'none'})")
    cfg = merge_checked(cfg, profiles[profile] or {}, f"{topology_file} profile '{profile}'")
    cfg = apply_overrides(cfg, overrides)
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
