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

from quantlab.engine.config import Config, build_config, load_yaml
from quantlab.errors import ConfigError
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


def load(path: Path, repo: Path) -> Campaign:
    """Read and check `path` (relative to `repo`'s layout: problems/<P>/<T>/config.yaml)."""
    data = _keys(path, "the campaign", load_yaml(path), TOP_KEYS, {"problem", "topology", "experiments"})
    topo = repo / "problems" / str(data["problem"]) / str(data["topology"]) / "config.yaml"
    if not topo.is_file():
        raise ConfigError(f"{path}: no such problem/topology {data['problem']}/{data['topology']} ({topo} missing)")
    images = _keys(path, "images", data.get("images", {"train": 0, "eval": 0}), {"train", "eval"}, {"train", "eval"})
    experiments = {}
    for name, spec in _keys(path, "experiments", data["experiments"], set(data["experiments"] or {}), set()).items():
        spec = _keys(path, f"experiment '{name}'", spec, EXPERIMENT_KEYS, {"mode"})
        if spec["mode"] not in MODES:
            raise ConfigError(f"{path}: experiment '{name}': unknown mode '{spec['mode']}' (known: {', '.join(MODES)})")
        experiments[name] = Experiment(name, spec["mode"], spec.get("profile", data.get("profile", "mini")),
                                       [str(o) for o in spec.get("overrides", [])], spec.get("start"),
                                       list(spec.get("after", [])))
    for e in experiments.values():
        for other in e.needs():
            if other not in experiments:
                raise ConfigError(f"{path}: experiment '{e.name}' needs '{other}', which is not an experiment here")
    tables = []
    for name, spec in (data.get("tables") or {}).items():
        spec = _keys(path, f"table '{name}'", spec, TABLE_KEYS, {"experiment", "table"})
        if spec["experiment"] not in experiments:
            raise ConfigError(f"{path}: table '{name}': no experiment '{spec['experiment']}'")
        parts = list(spec.get("parts", []))
        known = MODES[experiments[spec["experiment"]].mode].parts
        for part in parts:
            if part not in known:
                raise ConfigError(f"{path}: table '{name}': '{part}' is not a part of --mode "
                                  f"{experiments[spec['experiment']].mode} ({', '.join(known) or 'none'})")
        tables.append(PaperTable(name, spec["experiment"], spec["table"], parts))
    campaign = Campaign(str(data.get("campaign", path.stem)), path.resolve(), repo, str(data["problem"]),
                        str(data["topology"]), {k: int(v) for k, v in images.items()},
                        [str(t) for t in data.get("timing", [])], experiments, tables)
    for e in campaign.order():
        start = ["quantize.init=0"] if e.start else []  # the real id is set when the campaign is submitted
        try:
            e.cfg = build_config(config_files(), campaign.topology_file, e.profile, [*start, *e.overrides])
        except ConfigError as exc:
            raise ConfigError(f"{path}: experiment '{e.name}': {exc}") from None
    return campaign
