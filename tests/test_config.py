"""Config layering and schema errors."""
from pathlib import Path

import pytest

from quantlab.engine.config import build_config, merge_checked, parse_override
from quantlab.engine.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DEFAULTS = REPO / "cfg" / "defaults.yaml"
WDR = REPO / "problems" / "SwissCube" / "Widedepth" / "config.yaml"


def test_profile_and_overrides_apply_in_order():
    cfg = build_config(DEFAULTS, WDR, "mini", ["training.epochs=3", "training.lr=0.5", "seed=7"])
    assert cfg["training"]["epochs"] == 3 and cfg["training"]["lr"] == 0.5 and cfg["seed"] == 7
    assert cfg["input"]["size"] == 128  # from the mini profile
    assert cfg["training"]["momentum"] == 0.9  # from the defaults
    assert cfg["engine"]["lr_scaling"] == "linear"  # global default


def test_unknown_key_names_the_key_and_its_siblings():
    with pytest.raises(ConfigError) as err:
        build_config(DEFAULTS, WDR, "mini", ["training.epoch=3"])
    msg = str(err.value)
    assert "training.epoch" in msg and "epochs" in msg and "\n" not in msg


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="training.epochs.*expects int"):
        build_config(DEFAULTS, WDR, "mini", ["training.epochs=many"])
    with pytest.raises(ConfigError, match="expects int"):
        build_config(DEFAULTS, WDR, "mini", ["training.epochs=2.5"])


def test_int_is_accepted_for_float():
    assert build_config(DEFAULTS, WDR, "mini", ["training.lr=1"])["training"]["lr"] == 1


def test_unknown_profile():
    with pytest.raises(ConfigError, match="unknown profile 'huge'.*mini"):
        build_config(DEFAULTS, WDR, "huge", [])


def test_parse_override_nests_and_types():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": [1, 2]}}}
    assert parse_override("x=true") == {"x": True}
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_typo_in_a_file_names_the_file(tmp_path):
    topo = tmp_path / "config.yaml"
    topo.write_text("defaults: {training: {epochs: 1}}\nprofiles: {mini: {training: {epohcs: 2}}}\n")
    with pytest.raises(ConfigError, match=r"config.yaml profile 'mini'.*training.epohcs"):
        build_config(DEFAULTS, topo, "mini", [])


def test_merge_keeps_base_untouched():
    base = {"a": {"b": 1}}
    merge_checked(base, {"a": {"b": 2}}, "x")
    assert base == {"a": {"b": 1}}


def test_exponent_without_dot_is_a_number():
    # YAML 1.1 would read these as strings
    assert parse_override("training.lr=1e-3") == {"training": {"lr": 0.001}}
    assert parse_override("x=2E5") == {"x": 200000.0}
    assert parse_override("name=e5") == {"name": "e5"}
