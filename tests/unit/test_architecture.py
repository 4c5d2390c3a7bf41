"""The package's shape: two layers, no import cycle, short trainer constructors, options with help text, old option
names that still work. Read from the source (``ast``), so this runs without OpenUnlearning."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

import duet_plugin
from duet_plugin.core.bidistill import BiDistillConfig
from duet_plugin.core.duet import DUETConfig
from duet_plugin.core.lora import LoRAConfig
from duet_plugin.core.options import OptionError, build, option_help
from duet_plugin.core.undo import UNDOConfig

PACKAGE = Path(duet_plugin.__file__).parent
#: What the framework-free core may not import: the adapter layer, OU's packages, Hydra, HF's Trainer.
CORE_FORBIDDEN = (
    "duet_plugin.openunlearning",
    "trainer",
    "data",
    "evals",
    "hydra",
    "omegaconf",
    "transformers.trainer",
)
METHOD_CONFIGS = (DUETConfig, BiDistillConfig, UNDOConfig)


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import in the file, relative imports resolved."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                package = _module_name(path).split(".")
                base = ".".join([*package[: len(package) - node.level + (path.name == "__init__.py")], node.module])
            out.append((base, id(node) in top))
            out += [(f"{base}.{alias.name}", id(node) in top) for alias in node.names]
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """Module-level imports between the package's own modules."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m, at_top in _imports(path) if at_top and m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_import_cycle_in_the_package(graph) -> None:
    done: set[str] = set()

    def visit(node: str, stack: list[str]) -> None:
        if node in stack:
            pytest.fail("import cycle: " + " -> ".join([*stack[stack.index(node) :], node]))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*stack, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    assert "duet_plugin.core.teacher_targets" in graph  # the walk saw the package


def test_core_imports_neither_the_adapter_nor_a_framework() -> None:
    offenders = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        for module, _ in _imports(path):
            if any(module == f or module.startswith(f"{f}.") for f in CORE_FORBIDDEN):
                offenders.append(f"{path.relative_to(PACKAGE)}: {module}")
    assert offenders == []


def test_core_names_options_not_hydra_keys() -> None:
    hits = [
        f"{p.relative_to(PACKAGE)}:{i}"
        for p in sorted((PACKAGE / "core").rglob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "method_args" in line
    ]
    assert hits == []


def test_no_trainer_constructor_is_longer_than_30_lines() -> None:
    lengths = {}
    for path in sorted((PACKAGE / "openunlearning" / "trainers").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                for item in node.body:
                    if isinstance(item, ast.FunctionDef) and item.name in ("__init__", "prepare", "setup"):
                        lengths[f"{path.name}:{node.name}.{item.name}"] = item.end_lineno - item.lineno + 1
    assert "base.py:DistillationTrainer.__init__" in lengths
    assert {k: n for k, n in lengths.items() if n > 30} == {}


@pytest.mark.parametrize("config", [*METHOD_CONFIGS, LoRAConfig])
def test_every_option_has_help_text(config) -> None:
    missing = [name for name, text in option_help(config).items() if len(text) < 10]
    assert missing == []


@pytest.mark.parametrize(
    ("config", "old", "new", "value"),
    [(DUETConfig, "teacher", "teacher_mode", "online"), (BiDistillConfig, "teacher", "teacher_mode", "online"),
     (UNDOConfig, "positions", "tokens", "all")],
)  # fmt: skip
def test_renamed_options_still_work_with_a_warning(config, old, new, value) -> None:
    with pytest.warns(FutureWarning, match=rf"option '{old}' is renamed '{new}'"):
        cfg = build(config, {old: value, new: getattr(config(), new)})  # the YAML's default and the old override
    assert getattr(cfg, new) == value
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert getattr(build(config, {old: None}), new) == getattr(config(), new)  # the YAML's null: no warning
    default = getattr(config(), new)  # both names set, to different values, the new one not at its default
    with pytest.raises(OptionError, match=rf"^{old} \(the old name of {new}\) is '{default}' but {new} is '{value}'"):
        build(config, {old: default, new: value})


def test_option_errors_name_the_option_and_can_be_placed_under_a_key() -> None:
    with pytest.raises(OptionError) as err:
        DUETConfig(top_k=0)
    assert (err.value.option, str(err.value)) == ("top_k", "top_k must be a positive integer, got 0.")
    assert (
        str(err.value.under("trainer.method_args.")) == "trainer.method_args.top_k must be a positive integer, got 0."
    )
    with pytest.raises(OptionError, match=r"^stream_weights\.forget\.shove is not a direction"):
        BiDistillConfig(stream_weights={"forget": {"shove": 1.0}})
    with pytest.raises(OptionError, match=r"^prefix\.placement must be one of"):
        DUETConfig(prefix={"placement": "footer"})
