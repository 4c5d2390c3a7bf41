"""Every shipped config composes against OU's real config tree (Hydra compose API, plugin search path)."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from duet_plugin.core.bidistill import BiDistillConfig
from duet_plugin.core.duet import DUETConfig
from duet_plugin.core.options import accepted
from duet_plugin.core.undo import UNDOConfig

pytestmark = pytest.mark.ou


def _compose(ou_root, config: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(ou_root / "configs"), version_base=None):
        return compose(config_name=config, overrides=[*overrides, "task_name=t"])


def _resolved(cfg, key: str):
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


@pytest.mark.parametrize(
    ("experiment", "forget", "retain", "collator_ok"),
    [
        ("unlearn/tofu/duet", "DUET_TOFU_forget", "DUET_TOFU_retain", True),
        ("unlearn/muse/duet", "DUET_MUSE_forget", "DUET_MUSE_retain", True),
        ("unlearn/wmdp/duet", "DUET_WMDP_forget", "DUET_WMDP_retain", True),
    ],
)
def test_duet_experiments_compose(ou_imported, experiment, forget, retain, collator_ok) -> None:
    cfg = _compose(ou_imported, "unlearn.yaml", [f"experiment={experiment}"])
    assert cfg.trainer.handler == "DUET"
    assert set(cfg.data.forget) == {forget} and set(cfg.data.retain) == {retain}
    assert cfg.data.forget[forget].handler == "UnifiedQueryDataset"
    assert set(cfg.collator) == {"DUETCollator"}
    method_args = _resolved(cfg, "trainer.method_args")
    # the shipped config sets exactly what the trainer accepts (its options and their deprecated names)
    assert set(method_args) == set(accepted(DUETConfig))
    _resolved(cfg, "data")  # every interpolation in the data section resolves
    assert cfg.trainer.args.remove_unused_columns is False


@pytest.mark.parametrize("split", ["01", "05", "10"])
def test_tofu_splits_are_selectable(ou_imported, split) -> None:
    retain = {"01": "99", "05": "95", "10": "90"}[split]
    cfg = _compose(
        ou_imported,
        "unlearn.yaml",
        [
            "experiment=unlearn/tofu/duet",
            f"forget_split=forget{split}",
            f"retain_split=retain{retain}",
            f"holdout_split=holdout{split}",
        ],
    )
    data = _resolved(cfg, "data")
    assert data["forget"]["DUET_TOFU_forget"]["args"]["hf_args"]["name"] == f"forget{split}"
    assert data["retain"]["DUET_TOFU_retain"]["args"]["hf_args"]["name"] == f"retain{retain}"
    assert cfg.eval.tofu.forget_split == f"forget{split}"


def test_concepts_follow_the_data_split(ou_imported) -> None:
    wmdp = _compose(ou_imported, "unlearn.yaml", ["experiment=unlearn/wmdp/duet", "data_split=bio"])
    assert "pathogens" in _resolved(wmdp, "trainer.method_args.prefix.concepts")[0]
    assert _resolved(wmdp, "data.forget.DUET_WMDP_forget.args.hf_args.data_files").endswith("bio-forget-corpus.jsonl")
    news = _compose(ou_imported, "unlearn.yaml", ["experiment=unlearn/muse/duet"])
    assert _resolved(news, "trainer.method_args.prefix.concepts") is None  # derived from the forget text
    books = _compose(ou_imported, "unlearn.yaml", ["experiment=unlearn/muse/duet", "data_split=Books"])
    assert "Harry Potter" in _resolved(books, "trainer.method_args.prefix.concepts")[0]


@pytest.mark.parametrize("benchmark", ["tofu", "muse"])
def test_trainer_duet_composes_with_ou_default_experiments(ou_imported, benchmark) -> None:
    cfg = _compose(ou_imported, "unlearn.yaml", [f"experiment=unlearn/{benchmark}/default", "trainer=DUET"])
    assert cfg.trainer.handler == "DUET" and cfg.trainer.method_args.top_k == 10
    assert "gamma" not in cfg.trainer.method_args  # DUET.yaml does not inherit GradDiff's options


def test_trainer_duet_config_overrides(ou_imported) -> None:
    cfg = _compose(
        ou_imported,
        "unlearn.yaml",
        [
            "experiment=unlearn/tofu/duet",
            "trainer.method_args.teacher_mode=online",
            "trainer.method_args.positions=first_n",
            "trainer.method_args.prefix.concepts=[Ana Lopez,Bo Chen]",
            "trainer.method_args.stream_weights.retain=0.5",
        ],
    )
    args = _resolved(cfg, "trainer.method_args")
    assert args["teacher_mode"] == "online" and args["positions"] == "first_n"
    assert args["prefix"]["concepts"] == ["Ana Lopez", "Bo Chen"] and args["stream_weights"]["retain"] == 0.5


@pytest.mark.parametrize("benchmark", ["tofu", "muse", "wmdp"])
def test_undo_experiments_compose(ou_imported, benchmark) -> None:
    cfg = _compose(
        ou_imported, "unlearn.yaml", [f"experiment=unlearn/{benchmark}/undo", "trainer.method_args.teacher=saves/x"]
    )
    assert cfg.trainer.handler == "UNDO"
    method_args = _resolved(cfg, "trainer.method_args")
    assert set(method_args) == set(accepted(UNDOConfig))
    assert method_args["teacher"] == "saves/x" and method_args["alpha"] == 0.25 and method_args["beta"] == 0.0
    assert set(_resolved(cfg, "data")) >= {"forget", "retain"}


def test_trainer_undo_composes_with_ou_default_experiment(ou_imported) -> None:
    cfg = _compose(ou_imported, "unlearn.yaml", ["experiment=unlearn/tofu/default", "trainer=UNDO"])
    assert cfg.trainer.handler == "UNDO" and cfg.trainer.method_args.teacher is None
    assert "gamma" not in cfg.trainer.method_args


ROBUSTNESS = [
    "relearn_attack",
    "prompt_attack",
    "prefill_attack",
    "quantization_attack",
    "over_refusal",
    "performance_shift",
    "logit_lens",
    "directional_ablation",
]
#: Only where the benchmark has never-trained facts for the control (TOFU's holdout split).
ONLY = {"tofu": ["embedding_attack"], "muse": []}


@pytest.mark.parametrize(("benchmark", "defaults"), [("tofu", "forget_Q_A_ROUGE"), ("muse", "forget_knowmem_ROUGE")])
def test_robustness_experiments_add_the_suite_to_ous_metrics(ou_imported, benchmark, defaults) -> None:
    cfg = _compose(ou_imported, "eval.yaml", [f"experiment=eval/{benchmark}/robustness", "original_logs_path=/o.json"])
    metrics = _resolved(cfg, f"eval.{benchmark}.metrics")  # every interpolation resolves
    ours = ROBUSTNESS + ONLY[benchmark]
    assert defaults in metrics and list(metrics)[-len(ours) :] == ours  # OU's suite first, then ours
    assert metrics["relearn_attack"]["original_logs_path"] == "/o.json"
    assert metrics["performance_shift"]["original_logs_path"] == "/o.json"
    from evals.metrics import METRICS_REGISTRY

    assert all(metrics[m]["handler"] in METRICS_REGISTRY for m in ours)


@pytest.mark.parametrize("metric", ROBUSTNESS)
@pytest.mark.parametrize("benchmark", ["tofu", "muse"])
def test_each_robustness_metric_is_one_override_away(ou_imported, benchmark, metric) -> None:
    overrides = [f"experiment=eval/{benchmark}/default", f"+eval/{benchmark}_metrics={metric}"]
    cfg = _compose(ou_imported, "eval.yaml", overrides)
    assert _resolved(cfg, f"eval.{benchmark}.metrics.{metric}.handler") == metric


@pytest.mark.parametrize("benchmark", ["tofu", "muse", "wmdp"])
def test_bidistill_experiments_compose_with_one_streams_dataset(ou_imported, benchmark) -> None:
    cfg = _compose(ou_imported, "unlearn.yaml", [f"experiment=unlearn/{benchmark}/bidistill"])
    assert cfg.trainer.handler == "BiDistill" and set(cfg.collator) == {"DUETCollator"}
    data = _resolved(cfg, "data")
    assert data["retain"] == {} and len(data["forget"]) == 1
    streams = next(iter(data["forget"].values()))
    assert streams["handler"] == "UnifiedStreamsDataset"
    assert set(streams["args"]["streams"]) == {"forget", "retain", "boundary", "adversarial"}
    assert streams["args"]["adversarial_from_forget"]["prefill_words"]
    assert set(_resolved(cfg, "trainer.method_args")) == set(accepted(BiDistillConfig))
    assert cfg.trainer.args.remove_unused_columns is False


def test_bidistill_follows_the_tofu_splits(ou_imported) -> None:
    cfg = _compose(
        ou_imported,
        "unlearn.yaml",
        ["experiment=unlearn/tofu/bidistill", "forget_split=forget05", "retain_split=retain95"],
    )
    streams = _resolved(cfg, "data.forget.BiDistill_TOFU.args.streams")
    assert streams["forget"]["hf_args"]["name"] == "forget05" and streams["retain"]["hf_args"]["name"] == "retain95"
    assert [b["hf_args"]["name"] for b in streams["boundary"]] == ["real_authors_perturbed", "world_facts_perturbed"]
