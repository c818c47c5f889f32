"""Experiment configuration: YAML files merged in layers, checked against a schema.

Layers, each later one overriding the earlier: the defaults files (cfg/defaults.yaml and
every mode's section file), the topology's `defaults:`, its profile, `--set` overrides.

The schema has two parts. The merged defaults give every key and its type: a profile or
an override may only name keys that exist there, with a value of a compatible type, which
catches the typo that would otherwise silently train with the default. Each file's
`schema:` mapping gives allowed values and ranges ({dotted key: rule}), so that
`training.batch_size=0` or an unknown optimizer stops the run before anything is created:
  choices: [...]   the value (or each item of a list) is one of these
  quantizers: K    ... one of the registered quantizer families of kind K (weight,
                   activation: quantlab.quant.algorithms)
  min / max        numeric bounds, inclusive; above: a strict lower bound
  open: true       a mapping of free entries (e.g. {epoch: fraction}), replaced whole
  overlays: S      a mapping of some of section S's keys laid over it, checked as S's
YAML with a duplicated key is an error: the second copy would silently win.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from quantlab.errors import ConfigError
from quantlab.quant.algorithms import names

Config = dict[str, Any]
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
RULES = {"choices", "quantizers", "min", "max", "above", "open", "overlays"}


class _UniqueKeys(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key."""


def _mapping(loader: _UniqueKeys, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    f"found duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


_UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeys)


def load_yaml(path: Path) -> dict:
    """Read a YAML mapping, naming the file in any error."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = parse_yaml(path.read_text())
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


def merge_checked(base: Config, override: dict, source: str, prefix: str = "",
                  open_keys: Iterable[str] = (), reference: Config | None = None) -> Config:
    """Return `base` updated by `override`; every key of `override` must exist in
    `reference` (the defaults; `base` itself when None), with a value of its type. A
    mapping in `open_keys` (dotted) is replaced whole."""
    open_keys = frozenset(open_keys)
    reference = base if reference is None else reference
    out = copy.deepcopy(base)
    for key, value in override.items():
        dotted = f"{prefix}{key}"
        if key not in reference:
            known = ", ".join(sorted(map(str, reference))) or "(none)"
            raise ConfigError(f"{source}: unknown config key '{dotted}' (known keys here: {known})")
        default = reference[key]
        if not _compatible(default, value):
            raise ConfigError(f"{source}: config key '{dotted}' expects {type(default).__name__}, "
                              f"got {type(value).__name__} ({value!r})")
        if isinstance(default, dict) and isinstance(value, dict) and dotted not in open_keys:
            out[key] = merge_checked(out.get(key) or {}, value, source, dotted + ".", open_keys, default)
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
        value = parse_yaml(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).splitlines()[0]
        raise ConfigError(f"--set {text!r}: the value of '{key}' is not valid YAML ({problem}); "
                          "quote it to pass a string")
    nested: dict = _numbers(value)
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def open_keys(rules: dict[str, dict]) -> frozenset[str]:
    """The mappings a value replaces whole: those of free entries and the overlays."""
    return frozenset(k for k, r in rules.items() if r.get("open") or "overlays" in r)


class Schema:
    """The merged defaults (keys and types) and the value rules of every file."""

    def __init__(self, defaults: Config, rules: dict[str, dict]) -> None:
        self.defaults, self.rules = defaults, rules
        self.open = open_keys(rules)

    def merge(self, base: Config, override: dict, source: str) -> Config:
        """`override` laid over `base`, its keys and types checked against the defaults."""
        return merge_checked(base, override, source, open_keys=self.open, reference=self.defaults)

    def check(self, cfg: Config) -> Config:
        """Raise a ConfigError naming the first key whose value the rules do not allow, or
        that holds a number that is not finite (`.nan` passes every bound)."""
        bad = _non_finite(cfg)
        if bad is not None:
            raise ConfigError(f"config key '{bad[0]}': {bad[1]!r} is not a finite number")
        for key, rule in self.rules.items():
            value = _lookup(cfg, key)
            if value is _MISSING:
                raise ConfigError(f"schema names config key '{key}', which the configuration does not have")
            if "overlays" in rule:
                self._check_overlay(key, value, rule["overlays"], cfg)
                continue
            error = _value_error(key, value, rule)
            if error:
                raise ConfigError(error)
        return cfg

    def _check_overlay(self, key: str, value: dict, section: str, cfg: Config) -> None:
        """`value` holds some keys of `section`: known there, of its types and values."""
        merge_checked(_lookup(cfg, section), value, f"config key '{key}'", f"{key}.",
                      {f"{key}{k[len(section):]}" for k in self.open if k.startswith(section + ".")},
                      _lookup(self.defaults, section))
        for dotted, rule in self.rules.items():
            if dotted.startswith(section + "."):
                inner = _lookup(value, dotted[len(section) + 1:])
                error = None if inner is _MISSING else _value_error(f"{key}{dotted[len(section):]}", inner, rule)
                if error:
                    raise ConfigError(error)


def _layers(defaults_files: list[Path], topology_file: Path) -> tuple[Schema, dict]:
    """The schema of a topology (the defaults files' keys with the topology's `defaults:`
    laid over them, and every file's `schema:` rules) and its profiles."""
    base: Config = {}
    rules: dict[str, dict] = {}
    for path in defaults_files:
        data = load_yaml(path)
        rules.update(data.pop("schema", None) or {})
        clash = set(base) & set(data)
        if clash:
            raise ConfigError(f"{path}: section(s) {sorted(clash)} defined in another defaults file too")
        base.update(data)
    topo = load_yaml(topology_file)
    unknown = set(topo) - {"defaults", "profiles", "schema"}
    if unknown:
        raise ConfigError(f"{topology_file}: unknown top-level key(s) {sorted(unknown)}; "
                          "expected 'defaults', 'profiles' and 'schema'")
    rules.update(topo.get("schema") or {})
    for key, rule in rules.items():
        if not isinstance(rule, dict) or not set(rule) <= RULES:
            raise ConfigError(f"schema of '{key}': expected a mapping of {sorted(RULES)}, got {rule!r}")
        if rule.get("quantizers", "weight") not in ("weight", "activation"):
            raise ConfigError(f"schema of '{key}': quantizers must be weight or activation, got {rule['quantizers']!r}")
    replaced = open_keys(rules)
    topo_defaults = topo.get("defaults") or {}
    cfg = copy.deepcopy(base)
    for key, value in topo_defaults.items():
        if key not in cfg:
            cfg[key] = copy.deepcopy(value)
        elif isinstance(cfg[key], dict) and isinstance(value, dict):
            cfg[key] = merge_checked(cfg[key], value, str(topology_file), key + ".", replaced)
        else:
            raise ConfigError(f"{topology_file}: key '{key}' redefines a global default")
    return Schema(cfg, rules), topo.get("profiles") or {}


_MISSING = object()


def _non_finite(value: Any, key: str = "") -> tuple[str, float] | None:
    """The first (dotted key, value) at any depth whose number is NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        return key, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for sub, inner in items:
        found = _non_finite(inner, f"{key}.{sub}" if isinstance(value, dict) and key else
                            str(sub) if isinstance(value, dict) else f"{key}[{sub}]")
        if found is not None:
            return found
    return None


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
    if "quantizers" in rule and value not in names(rule["quantizers"]):
        return f"config key '{key}': {value!r} is not one of {list(names(rule['quantizers']))}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if "min" in rule and value < rule["min"]:
        return f"config key '{key}' must be at least {rule['min']}, got {value}"
    if "above" in rule and value <= rule["above"]:
        return f"config key '{key}' must be above {rule['above']}, got {value}"
    if "max" in rule and value > rule["max"]:
        return f"config key '{key}' must be at most {rule['max']}, got {value}"
    return None


def build_config(defaults_files: list[Path], topology_file: Path, profile: str,
                 overrides: list[str]) -> Config:
    """Resolve the configuration of a new experiment: defaults, topology, profile, --set."""
    schema, profiles = _layers(defaults_files, topology_file)
    if profile not in profiles:
        raise ConfigError(f"{topology_file}: unknown profile '{profile}' "
                          f"(available: {', '.join(sorted(profiles)) or 'none'})")
    cfg = schema.merge(schema.defaults, profiles[profile] or {}, f"{topology_file} profile '{profile}'")
    cfg = apply_overrides(cfg, overrides, schema)
    schema.check(cfg)
    cfg["profile"] = profile
    return cfg


def resume_config(defaults_files: list[Path], topology_file: Path, saved: Config, source: Path,
                  overrides: list[str]) -> tuple[Config, list[str]]:
    """The configuration of a continued experiment and the saved keys that no longer
    exist (dropped, for the log): its `config.yaml` laid over today's defaults (keys added
    since take their default), then --set, checked like a new one."""
    schema, _ = _layers(defaults_files, topology_file)
    saved = dict(saved)
    profile = saved.pop("profile", None)
    kept, dropped = _known(saved, schema.defaults, "", schema.open)
    cfg = apply_overrides(schema.merge(schema.defaults, kept, str(source)), overrides, schema)
    schema.check(cfg)
    cfg["profile"] = profile
    return cfg, dropped


def _known(saved: dict, defaults: dict, prefix: str, open_keys: frozenset) -> tuple[dict, list[str]]:
    """`saved` without the keys `defaults` no longer has (their dotted names listed);
    open mappings keep every entry."""
    kept, dropped = {}, []
    for key, value in saved.items():
        if key not in defaults:
            dropped.append(prefix + str(key))
        elif isinstance(value, dict) and isinstance(defaults[key], dict) and f"{prefix}{key}" not in open_keys:
            kept[key], inner = _known(value, defaults[key], f"{prefix}{key}.", open_keys)
            dropped += inner
        else:
            kept[key] = value
    return kept, dropped


def apply_overrides(cfg: Config, overrides: list[str], schema: Schema) -> Config:
    """Apply `--set key=value` overrides, each checked against the schema's keys."""
    for text in overrides:
        cfg = schema.merge(cfg, parse_override(text), f"--set {text}")
    return cfg


def dump(cfg: Config) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)


def overlaid(base: dict, over: dict) -> dict:
    """`base` with `over`'s entries laid over it, mappings merged entry by entry (how
    `quantize.child_training`, checked as `training` keys, changes `training`)."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = overlaid(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else copy.deepcopy(value)
    return out


def child_config(cfg: Config, init: str, rules: list[dict], epochs: int) -> Config:
    """The configuration of a QAT child run a search launches (an MQAT stage or probe, a
    uniform or HAWQ-V3 baseline): start from `init`, quantize by `rules`, train `epochs`,
    with `quantize.child_training` laid over `training`; its last epoch is its result."""
    child = copy.deepcopy(cfg)
    child["quantize"]["init"] = init
    child["quantize"]["rules"] = rules
    child["training"] = overlaid(cfg["training"], cfg["quantize"]["child_training"])
    child["training"]["epochs"] = epochs
    child["engine"]["select_split"] = "none"  # a search reads its children's last epoch: no selection to pay for
    return child
