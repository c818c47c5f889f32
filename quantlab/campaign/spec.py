"""A campaign file: the experiments that reproduce a paper's tables, in one YAML file.

    campaign: mqat-swisscube          # its name (folder logs/campaigns/<name>/)
    problem: SwissCube
    topology: Widedepth
    profile: paper                    # of every experiment that names none
    images: {train: 40000, eval: 2000}  # per epoch / per evaluation: the GPU-hour estimate's
    timing: [KEY=VALUE, ...]          # overrides of the short timing run (a small synthetic set)
    experiments:
      float: {mode: train}
      mqat: {mode: mqat, start: float, overrides: [mqat.grid=[2, 4, 8]]}
    tables:                           # each paper table: its experiment, table and parts
      T-A2: {experiment: mqat, table: cube, parts: [cube]}

An experiment runs after the experiments it `start`s from (its `quantize.init`) or names
in `after`. Every experiment's configuration is resolved when the file is loaded, so an
unknown topology, mode, profile or key stops the campaign before anything is submitted.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from quantlab.engine.config import Config, build_config, load_yaml, parse_override
from quantlab.errors import ConfigError
from quantlab.files import checked_name
from quantlab.modes import MODES, config_files

TOP_KEYS = {"campaign", "problem", "topology", "profile", "images", "timing", "experiments", "tables"}
EXPERIMENT_KEYS = {"mode", "profile", "start", "after", "overrides"}
TABLE_KEYS = {"experiment", "table", "parts"}


@dataclass
class Experiment:
    name: str
    mode: str
    profile: str
    overrides: list[str]
    start: str | None
    after: list[str]
    cfg: Config = field(default_factory=dict)

    def needs(self) -> list[str]:
        """The experiments that must be finished before this one starts."""
        return ([self.start] if self.start else []) + [a for a in self.after if a != self.start]

    def spec(self) -> dict:
        """What the campaign file says of the experiment: recorded when the experiment is
        created, so a later edit of the file is seen (`changes`)."""
        return {"mode": self.mode, "profile": self.profile, "start": self.start, "after": self.after,
                "overrides": self.overrides}

    def changes(self, recorded: dict) -> list[str]:
        """What differs between `recorded` (an earlier spec) and today's: the override keys
        whose values changed, came or went (by dotted key), and the other fields."""
        now = self.spec()
        found = [f"{field} ({recorded.get(field)!r} -> {now[field]!r})" for field in ("mode", "profile", "start")
                 if recorded.get(field) != now[field]]
        if sorted(recorded.get("after", [])) != sorted(now["after"]):
            found.append(f"after ({recorded.get('after')} -> {now['after']})")
        before, after = _flat_overrides(recorded.get("overrides", [])), _flat_overrides(now["overrides"])
        found += [f"{key} ({before.get(key, 'unset')!r} -> {after.get(key, 'unset')!r})"
                  for key in sorted(set(before) | set(after)) if before.get(key, _UNSET) != after.get(key, _UNSET)]
        return found


@dataclass
class PaperTable:
    name: str
    experiment: str
    table: str
    parts: list[str]


@dataclass
class Campaign:
    name: str
    path: Path
    repo: Path
    problem: str
    topology: str
    images: dict[str, int]
    timing: list[str]
    experiments: dict[str, Experiment]
    tables: list[PaperTable]

    @property
    def topology_file(self) -> Path:
        return self.repo / "problems" / self.problem / self.topology / "config.yaml"

    def order(self) -> list[Experiment]:
        """The experiments, each after those it needs."""
        done: list[str] = []
        while len(done) < len(self.experiments):
            ready = [e for e in self.experiments.values() if e.name not in done and set(e.needs()) <= set(done)]
            if not ready:
                raise ConfigError(f"{self.path}: experiments {sorted(set(self.experiments) - set(done))} need "
                                  "each other (a cycle of start/after)")
            done += [e.name for e in ready]
        return [self.experiments[n] for n in done]


_UNSET = object()


def _flat_overrides(overrides: list[str]) -> dict[str, object]:
    """`--set` overrides as {dotted key: value}, later ones winning, as build_config applies them."""
    flat: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            flat[prefix] = node
    for text in overrides:
        walk(parse_override(text), "")
    return flat


def _keys(path: Path, where: str, data: object, allowed: set[str], required: set[str]) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {where} must be a mapping")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' in {where} (known: {', '.join(sorted(allowed))})")
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{path}: {where} lacks the key '{missing[0]}'")
    return data


def _text(path: Path, where: str, value: object) -> str:
    """A scalar of the file as text: a string, or a number or boolean YAML typed."""
    if isinstance(value, (dict, list)) or value is None or "\n" in str(value) or "\r" in str(value):
        raise ConfigError(f"{path}: {where} must be one line of text, got {value!r}")
    return str(value)


def _texts(path: Path, where: str, value: object) -> list[str]:
    """A list of one-line strings (an override list, `after`, `parts`): a bare string is
    refused, since it would be read character by character."""
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {where} must be a list, e.g. [{value}], got {value!r}")
    return [_text(path, f"{where}[{i}]", v) for i, v in enumerate(value)]


def _count(path: Path, where: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{path}: {where} must be a whole number of images, got {value!r}")
    return value


def _name(path: Path, where: str, value: object) -> str:
    try:
        return checked_name(value, where)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def load(path: Path, repo: Path) -> Campaign:
    """Read and check `path` (relative to `repo`'s layout: problems/<P>/<T>/config.yaml).
    Every name that becomes a folder or a Slurm job name (the campaign's, each
    experiment's, each table's) is checked as such, and every value's type, before
    anything is resolved."""
    data = _keys(path, "the campaign", load_yaml(path), TOP_KEYS, {"problem", "topology", "experiments"})
    name = _name(path, "campaign", data.get("campaign", path.stem))
    problem = _name(path, "problem", data["problem"])
    topology = _name(path, "topology", data["topology"])
    topo = repo / "problems" / problem / topology / "config.yaml"
    if not topo.is_file():
        raise ConfigError(f"{path}: no such problem/topology {problem}/{topology} ({topo} missing)")
    images = _keys(path, "images", data.get("images", {"train": 0, "eval": 0}), {"train", "eval"}, {"train", "eval"})
    images = {k: _count(path, f"images.{k}", v) for k, v in images.items()}
    profile = _text(path, "profile", data.get("profile", "mini"))
    experiments = {}
    for key, spec in _keys(path, "experiments", data["experiments"], set(data["experiments"] or {}), set()).items():
        where = f"experiment '{key}'"
        spec = _keys(path, where, spec, EXPERIMENT_KEYS, {"mode"})
        mode = _text(path, f"{where}: mode", spec["mode"])
        if mode not in MODES:
            raise ConfigError(f"{path}: {where}: unknown mode '{mode}' (known: {', '.join(MODES)})")
        start = spec.get("start")
        experiments[key] = Experiment(
            _name(path, "experiment name", key), mode, _text(path, f"{where}: profile", spec.get("profile", profile)),
            _texts(path, f"{where}: overrides", spec.get("overrides", [])),
            None if start is None else _text(path, f"{where}: start", start),
            _texts(path, f"{where}: after", spec.get("after", [])))
    for e in experiments.values():
        for other in e.needs():
            if other not in experiments:
                raise ConfigError(f"{path}: experiment '{e.name}' needs '{other}', which is not an experiment here")
    tables = []
    for key, spec in (data.get("tables") or {}).items():
        where = f"table '{_text(path, 'a table name', key)}'"
        spec = _keys(path, where, spec, TABLE_KEYS, {"experiment", "table"})
        experiment = _text(path, f"{where}: experiment", spec["experiment"])
        if experiment not in experiments:
            raise ConfigError(f"{path}: {where}: no experiment '{experiment}'")
        parts = _texts(path, f"{where}: parts", spec.get("parts", []))
        known = MODES[experiments[experiment].mode].parts
        for part in parts:
            if part not in known:
                raise ConfigError(f"{path}: {where}: '{part}' is not a part of --mode "
                                  f"{experiments[experiment].mode} ({', '.join(known) or 'none'})")
        tables.append(PaperTable(str(key), experiment, _name(path, f"{where}: table", spec["table"]), parts))
    campaign = Campaign(name, path.resolve(), repo, problem, topology, images,
                        _texts(path, "timing", data.get("timing", [])), experiments, tables)
    for e in campaign.order():
        start = ["quantize.init=0"] if e.start else []  # the real id is set when the campaign is submitted
        try:
            e.cfg = build_config(config_files(), campaign.topology_file, e.profile, [*start, *e.overrides])
        except ConfigError as exc:
            raise ConfigError(f"{path}: experiment '{e.name}': {exc}") from None
    return campaign
