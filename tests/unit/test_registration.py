"""Registration logic against OU's registry contract (plain dicts keyed by name), with stand-in modules."""

from __future__ import annotations

import sys
import types

import pytest

from duet_plugin.openunlearning.registration import RegistrationError, config_dir, framework_detected, register


class MyTrainer:
    pass


class MyCollator:
    pass


@pytest.fixture
def fake_ou(monkeypatch):
    """Stand-ins for OU's `trainer` and `data` modules: the attributes register() relies on, nothing else."""
    trainer = types.ModuleType("trainer")
    trainer.TRAINER_REGISTRY = {"GradDiff": object}
    trainer.load_trainer = lambda *a, **k: None
    data = types.ModuleType("data")
    data.DATASET_REGISTRY, data.COLLATOR_REGISTRY = {}, {}
    monkeypatch.setitem(sys.modules, "trainer", trainer)
    monkeypatch.setitem(sys.modules, "data", data)
    return trainer, data


def _components():
    return [
        ("trainer", "TRAINER_REGISTRY", {"MyTrainer": MyTrainer}),
        ("data", "COLLATOR_REGISTRY", {"MyCollator": MyCollator}),
    ]


def test_no_op_without_ou(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "trainer", raising=False)
    assert framework_detected() is False
    assert register(_components) is False


def test_a_module_named_trainer_that_is_not_ou_is_ignored(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "trainer", types.ModuleType("trainer"))
    assert register(_components) is False


def test_registers_and_is_idempotent(fake_ou) -> None:
    trainer, data = fake_ou
    assert register(_components) is True
    assert register(_components) is True
    assert trainer.TRAINER_REGISTRY == {"GradDiff": object, "MyTrainer": MyTrainer}
    assert data.COLLATOR_REGISTRY == {"MyCollator": MyCollator}


def test_refuses_to_replace_an_existing_name_and_registers_nothing(fake_ou) -> None:
    trainer, data = fake_ou
    trainer.TRAINER_REGISTRY["MyTrainer"] = object
    with pytest.raises(RegistrationError, match=r"already has 'MyTrainer'.*will not replace"):
        register(_components)
    assert trainer.TRAINER_REGISTRY["MyTrainer"] is object
    assert data.COLLATOR_REGISTRY == {}


def test_config_tree_ships_with_the_package() -> None:
    root = config_dir()
    for rel in (
        "trainer/DUET.yaml",
        "collator/DUETCollator.yaml",
        "experiment/unlearn/tofu/duet.yaml",
        "experiment/unlearn/muse/duet.yaml",
        "experiment/unlearn/wmdp/duet.yaml",
        "trainer/UNDO.yaml",
        "experiment/unlearn/tofu/undo.yaml",
        "experiment/unlearn/muse/undo.yaml",
        "experiment/unlearn/wmdp/undo.yaml",
        "eval/tofu_metrics/quantization_attack.yaml",
        "eval/tofu_metrics/over_refusal.yaml",
        "eval/tofu_metrics/embedding_attack.yaml",
        "eval/tofu_metrics/directional_ablation.yaml",
        "eval/tofu_metrics/relearn_heldout.yaml",
        "eval/muse_metrics/relearn_heldout.yaml",
    ):
        assert (root / rel).is_file(), rel


def test_hydra_plugin_is_discovered_and_a_no_op_outside_ou(monkeypatch) -> None:
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl
    from hydra.core.plugins import Plugins
    from hydra.plugins.search_path_plugin import SearchPathPlugin

    monkeypatch.delitem(sys.modules, "trainer", raising=False)
    plugins = [p for p in Plugins.instance().discover(SearchPathPlugin) if p.__name__ == "DUETPluginSearchPathPlugin"]
    assert len(plugins) == 1
    search_path = ConfigSearchPathImpl()
    search_path.append("main", "file:///somewhere")
    plugins[0]().manipulate_search_path(search_path)
    assert [e.provider for e in search_path.get_path()] == ["main"]


def test_hydra_plugin_adds_configs_inside_ou(fake_ou, monkeypatch) -> None:
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    from hydra_plugins.duet_plugin.duet_plugin_searchpath import DUETPluginSearchPathPlugin

    calls = []
    monkeypatch.setattr("duet_plugin.openunlearning.registration._components", lambda: calls.append(1) or [])
    search_path = ConfigSearchPathImpl()
    DUETPluginSearchPathPlugin().manipulate_search_path(search_path)
    entries = search_path.get_path()
    assert entries[-1].provider == "duet-plugin" and entries[-1].path == f"file://{config_dir()}"
    assert calls == [1]  # register() ran


def test_hydra_plugin_warns_instead_of_breaking_ou_on_a_clash(fake_ou, monkeypatch) -> None:
    from hydra._internal.config_search_path_impl import ConfigSearchPathImpl

    from hydra_plugins.duet_plugin.duet_plugin_searchpath import DUETPluginSearchPathPlugin

    trainer, _ = fake_ou
    trainer.TRAINER_REGISTRY["MyTrainer"] = object
    monkeypatch.setattr("duet_plugin.openunlearning.registration._components", _components)
    with pytest.warns(UserWarning, match="not registered.*already has 'MyTrainer'"):
        DUETPluginSearchPathPlugin().manipulate_search_path(ConfigSearchPathImpl())
