"""Config layering and schema errors."""
from pathlib import Path

import pytest

from quantlab.engine.config import build_config, merge_checked, parse_override
from quantlab.errors import ConfigError
from quantlab.modes import config_files

REPO = Path(__file__).resolve().parents[1]
WDR = REPO / "problems" / "SwissCube" / "Widedepth" / "config.yaml"


def test_profile_and_overrides_apply_in_order():
    cfg = build_config(config_files(), WDR, "mini", ["training.epochs=3", "training.lr=0.5", "seed=7"])
    assert cfg["training"]["epochs"] == 3 and cfg["training"]["lr"] == 0.5 and cfg["seed"] == 7
    assert cfg["input"]["size"] == 128  # from the mini profile
    assert cfg["training"]["momentum"] == 0.9  # from the defaults
    assert cfg["engine"]["lr_scaling"] == "linear"  # global default


def test_unknown_key_names_the_key_and_its_siblings():
    with pytest.raises(ConfigError) as err:
        build_config(config_files(), WDR, "mini", ["training.epoch=3"])
    msg = str(err.value)
    assert "training.epoch" in msg and "epochs" in msg and "\n" not in msg


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="training.epochs.*expects int"):
        build_config(config_files(), WDR, "mini", ["training.epochs=many"])
    with pytest.raises(ConfigError, match="expects int"):
        build_config(config_files(), WDR, "mini", ["training.epochs=2.5"])


def test_int_is_accepted_for_float():
    assert build_config(config_files(), WDR, "mini", ["training.lr=1"])["training"]["lr"] == 1


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'huge'.*mini"):
        build_config(config_files(), WDR, "huge", [])


def test_parse_override_nests_and_types():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert parse_override("x=true") == {"x": True}
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_typo_in_a_file_names_the_file(tmp_path):
    topo = tmp_path / "config.yaml"
    topo.write_text("defaults: {training: {epochs: 1}}\nprofiles: {mini: {training: {epohcs: 2}}}\n")
    with pytest.raises(ConfigError, match=r"config.yaml profile 'mini'.*training.epohcs"):
        build_config(config_files(), topo, "mini", [])


def test_merge_keeps_base_untouched():
    base = {"a": {"b": 1}}
    merge_checked(base, {"a": {"b": 2}}, "x")
    assert base == {"a": {"b": 1}}


def test_exponent_without_dot_is_a_number():
    # YAML 1.1 would read these as strings
    assert parse_override("training.lr=1e-3") == {"training": {"lr": 0.001}}
    assert parse_override("x=2E5") == {"x": 200000.0}
    assert parse_override("name=e5") == {"name": "e5"}


TOPOLOGIES = sorted((REPO / "problems").glob("*/*/config.yaml"))


def _layered(base: dict, over: dict, replaced: set[str], prefix: str = "") -> dict:
    """A second, naive implementation of the layering: `over` laid over `base` key by
    key, mappings merged entry by entry except those named in `replaced` (dotted)."""
    out = dict(base)
    for key, value in over.items():
        dotted = prefix + str(key)
        if isinstance(value, dict) and isinstance(base.get(key), dict) and dotted not in replaced:
            out[key] = _layered(base[key], value, replaced, dotted + ".")
        else:
            out[key] = value
    return out


def _at(cfg: dict, dotted: str):
    for part in dotted.split("."):
        assert isinstance(cfg, dict) and part in cfg, f"schema key {dotted!r} missing from the built config"
        cfg = cfg[part]
    return cfg


def _allowed(value, rule: dict) -> bool:
    """Whether `value` (each item of a list) keeps a schema rule, read off the rule itself."""
    if isinstance(value, list):
        return all(_allowed(v, rule) for v in value)
    if value is None:
        return True
    if "choices" in rule and value not in rule["choices"]:
        return False
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return True
    return (value >= rule.get("min", value) and value <= rule.get("max", value)
            and ("above" not in rule or value > rule["above"]))


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=lambda p: f"{p.parent.parent.name}/{p.parent.name}")
def test_every_profile_builds_to_its_layers_and_keeps_every_schema_rule(topology: Path) -> None:
    """Each shipped profile must resolve to exactly the defaults files, the topology's
    `defaults:` and the profile laid over one another (open and overlay mappings replaced
    whole), computed here by a second implementation from the raw YAML; a layer skipped,
    applied out of order or merged into a replaced mapping changes the result. Every
    schema key must exist in the result and its value keep its rule."""
    import yaml
    files = [yaml.safe_load(path.read_text()) for path in config_files()]
    topo = yaml.safe_load(topology.read_text())
    rules = {k: r for data in [*files, topo] for k, r in (data.get("schema") or {}).items()}
    replaced = {k for k, r in rules.items() if r.get("open") or "overlays" in r}
    defaults: dict = {}
    for data in files:
        defaults.update({k: v for k, v in data.items() if k != "schema"})
    defaults = _layered(defaults, topo.get("defaults") or {}, replaced)
    assert topo["profiles"], "a topology without profiles proves nothing here"
    for profile, layer in topo["profiles"].items():
        cfg = build_config(config_files(), topology, profile, [])
        assert cfg == {**_layered(defaults, layer or {}, replaced), "profile": profile}, profile
        for key, rule in rules.items():
            value = _at(cfg, key)
            assert "open" in rule or "overlays" in rule or _allowed(value, rule), (profile, key, value, rule)


@pytest.mark.parametrize("override, message", [
    ("engine.device=tpu", "'engine.device': 'tpu' is not one of ['auto', 'cpu', 'cuda']"),
    ("training.batch_size=0", "'training.batch_size' must be at least 1, got 0"),
    ("training.schedule.warmup_factor=0", "'training.schedule.warmup_factor' must be above 0, got 0"),
    ("training.momentum=1.5", "'training.momentum' must be at most 1, got 1.5"),
    ("mqat.grid=[2, 9]", "'mqat.grid' must be at most 8, got 9"),  # list items one by one
    ("quantize.child_training={schedule: {type: steps}}",
     "'quantize.child_training.schedule.type': 'steps' is not one of"),
    ("quantize.child_training={lrr: 0.5}", "unknown config key 'quantize.child_training.lrr'"),
    ("network.norm=group", "'network.norm': 'group' is not one of ['frozen', 'batch']"),
    ("network.backbone=resnet18", "'network.backbone': 'resnet18' is not one of"),
])
def test_values_outside_the_schema_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        build_config(config_files(), REPO / "problems" / "COCO" / "DETR" / "config.yaml", "paper", [override])
    assert message in str(err.value)


def test_schema_choices_are_what_the_code_accepts():
    import yaml
    from quantlab.engine.optim import LR_SCALINGS, OPTIMIZERS, SCHEDULES
    from quantlab.modes.fisher import SCHEMES as FISHER
    from quantlab.ptq.schemes import SCHEMES as PTQ
    schema = {}
    for path in config_files():
        schema.update(yaml.safe_load(path.read_text()).get("schema", {}))
    assert tuple(schema["training.optimizer"]["choices"]) == OPTIMIZERS
    assert tuple(schema["training.schedule.type"]["choices"]) == SCHEDULES
    assert tuple(schema["engine.lr_scaling"]["choices"]) == LR_SCALINGS
    assert tuple(schema["ptq.schemes"]["choices"]) == tuple(PTQ) and tuple(schema["fisher.schemes"]["choices"]) == FISHER


def test_unparseable_yaml_in_set_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"the value of 'data.root' is not valid YAML"):
        parse_override("data.root=[oops")
    assert parse_override("data.root='[oops'") == {"data": {"root": "[oops"}}


def test_exponents_are_numbers_at_any_depth():
    assert parse_override("s={gamma: 1.0e12, m: [1e3]}") == {"s": {"gamma": 1e12, "m": [1000.0]}}


def test_a_resumed_config_gets_keys_added_since_and_is_checked(tmp_path):
    from quantlab.engine.config import resume_config
    saved = build_config(config_files(), WDR, "mini", [])
    del saved["engine"]["stall_timeout"]  # an experiment from before the key existed
    saved["ptq"]["temperature"] = 6.0  # a key that has moved away since
    cfg, dropped = resume_config(config_files(), WDR, saved, tmp_path / "config.yaml", ["training.epochs=7"])
    assert cfg["engine"]["stall_timeout"] == 600 and cfg["training"]["epochs"] == 7 and cfg["profile"] == "mini"
    assert dropped == ["ptq.temperature"] and "temperature" not in cfg["ptq"]
    with pytest.raises(ConfigError, match="'training.epochs' must be at least 1"):
        resume_config(config_files(), WDR, saved, tmp_path / "config.yaml", ["training.epochs=0"])
