"""The import rules of the layers (docs/architecture.md), read from the source itself."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

#: modules that import no other quantlab module but each other
LEAVES = ("quantlab.errors", "quantlab.files", "quantlab.signals", "quantlab.progress")
#: package -> the quantlab packages it must not import
FORBIDDEN = {
    "quantlab.quant": ("quantlab.engine", "quantlab.modes", "quantlab.mqat", "quantlab.sensitivity",
                       "quantlab.metrics", "quantlab.hawq", "quantlab.ptq"),
    "quantlab.metrics": ("quantlab.engine", "quantlab.modes", "quantlab.mqat", "quantlab.sensitivity",
                         "quantlab.hawq", "quantlab.ptq", "quantlab.records"),
    "quantlab.sensitivity": ("quantlab.engine", "quantlab.modes", "quantlab.mqat", "quantlab.hawq", "quantlab.ptq"),
    "quantlab.records": ("quantlab.quant", "quantlab.engine", "quantlab.modes", "quantlab.mqat", "quantlab.sensitivity",
                         "quantlab.hawq", "quantlab.ptq", "quantlab.deploy", "quantlab.campaign"),
    "quantlab.hawq": ("quantlab.modes", "quantlab.mqat", "quantlab.ptq", "quantlab.campaign"),
    "quantlab.ptq": ("quantlab.modes", "quantlab.mqat", "quantlab.hawq", "quantlab.campaign"),
    "quantlab.mqat": ("quantlab.modes", "quantlab.sensitivity", "quantlab.ptq", "quantlab.campaign"),
    "quantlab.deploy": ("quantlab.engine", "quantlab.modes", "quantlab.mqat", "quantlab.sensitivity",
                        "quantlab.campaign"),
    "quantlab.engine": ("quantlab.modes", "quantlab.mqat", "quantlab.sensitivity", "quantlab.hawq", "quantlab.ptq",
                        "quantlab.campaign"),
    "quantlab.modes": ("quantlab.campaign",),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def sources(folder: str) -> list[Path]:
    """The files of a package, or the one file of a module (quantlab/records.py)."""
    module = REPO / f"{folder}.py"
    return [module] if module.is_file() else sorted((REPO / folder).rglob("*.py"))


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_library_never_imports_a_problem():
    bad = {module_name(p): sorted(i for i in imports(p) if within(i, "problems")) for p in sources("quantlab")}
    assert not {k: v for k, v in bad.items() if v}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_each_layer_imports_only_what_lies_below_it(package):
    assert sources(package.replace(".", "/")), f"{package} has no source: the rule checks nothing"
    bad = {}
    for path in sources(package.replace(".", "/")):
        wrong = sorted(i for i in imports(path) for f in FORBIDDEN[package] if within(i, f))
        if wrong:
            bad[module_name(path)] = wrong
    assert not bad


def test_leaves_import_only_leaves():
    for leaf in LEAVES:
        path = REPO / (leaf.replace(".", "/") + ".py")
        own = sorted(i for i in imports(path) if within(i, "quantlab") and not any(within(i, x) for x in LEAVES))
        assert not own, (leaf, own)


def test_a_mode_never_imports_another_mode():
    """A mode is its Mode(...), its options and a run; what two modes share lives in the
    library (quantlab.mqat, quantlab.hawq, quantlab.ptq, quantlab.engine.runs)."""
    modes = {module_name(p) for p in sources("quantlab/modes")} - {"quantlab.modes"}
    for path in sources("quantlab/modes"):
        others = sorted(i for i in imports(path) for m in modes if within(i, m) and m != module_name(path))
        assert not others, (module_name(path), others)


def test_a_problem_never_imports_another_problem():
    for problem in sorted(p for p in (REPO / "problems").iterdir() if (p / "__init__.py").is_file()):
        others = sorted(i for path in problem.rglob("*.py") for i in imports(path)
                        if within(i, "problems") and not within(i, f"problems.{problem.name}"))
        assert not others, (problem.name, others)


def test_main_dispatches_without_knowing_a_mode():
    """main.py takes the registry; it imports no mode module and names no mode."""
    from quantlab.modes import MODES
    source = (REPO / "main.py").read_text()
    assert {i for i in imports(REPO / "main.py") if within(i, "quantlab.modes")} <= {
        "quantlab.modes", "quantlab.modes.DEFAULT", "quantlab.modes.MODES", "quantlab.modes.Mode",
        "quantlab.modes.options", "quantlab.modes.config_files", "quantlab.modes.execute"}
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("#", "horovodrun",
                                                                                              "python main.py")))
    assert not [name for name in MODES if f'"{name}"' in code or f"'{name}'" in code]


def test_every_mode_is_registered_with_its_own_section_file():
    from quantlab.modes import HERE, MODES
    assert set(MODES) == {"train", "test", "export", "deploy", "cube", "mqat", "hawq", "ptq", "fisher", "table"}
    for mode in MODES.values():
        if mode.section:
            assert (HERE / f"{mode.section}.yaml").is_file(), mode.name


def test_an_options_help_names_exactly_the_modes_that_take_it():
    import re

    from quantlab.modes import MODES, options
    for flag, spec in options().items():
        takers = {m.name for m in MODES.values() if any(f == flag for f, _ in m.options)}
        named = re.fullmatch(r"for --mode ([a-z, ]+): .*", spec["help"], re.S)
        assert named and set(named.group(1).split(", ")) == takers, (flag, spec["help"])
