"""The reproduction grids' commands compose against OU's real config tree (Hydra compose API, plugin search path),
and the composed configs give every method the same schedule. Every train command is composed; of the eval
commands, which differ between runs only in paths, one per kind (composing costs about 1 s, 4 s with the
robustness metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from duet_plugin import reproduce as rp

pytestmark = pytest.mark.ou


def _overrides(step: rp.Step) -> tuple[str, list[str]]:
    """(config name, Hydra overrides) of a grid command."""
    argv = list(step.argv)
    script = next(i for i, a in enumerate(argv) if a.endswith(("train.py", "eval.py")))
    config = "unlearn.yaml" if argv[script].endswith("train.py") else "eval.yaml"
    rest = argv[script + 1 :]
    if rest and rest[0].startswith("--config-name="):
        config = rest.pop(0).split("=", 1)[1]
    return config, rest


def _compose(ou_root: Path, steps: list[rp.Step]) -> dict[str, object]:
    out = {}
    with initialize_config_dir(config_dir=str(ou_root / "configs"), version_base=None):
        for step in steps:
            config, overrides = _overrides(step)
            out[step.name] = compose(config_name=config, overrides=overrides)
    return out


def _selected(grid: rp.Grid, eval_kinds: tuple[str, ...], trains: tuple[str, ...] | None = None) -> list[rp.Step]:
    """All (or the named methods') train steps and the first step of each eval kind."""
    steps = [s for s in grid.steps if s.kind == "train" and (trains is None or s.run.rsplit("_", 1)[1] in trains)]
    return steps + [next(s for s in grid.steps if s.kind == kind) for kind in eval_kinds]


def _grid(ou_root: Path, benchmark: str, split: str, tmp_path: Path, **kw) -> rp.Grid:
    return rp.build_grid(
        rp.GridOptions(
            benchmark=benchmark,
            ou_root=ou_root,
            output_root=tmp_path / "out",
            methods=rp.resolve_methods(benchmark, None),
            splits=[split],
            undo_teachers=rp.UNDO_TEACHERS[benchmark],
            **kw,
        )
    )


@pytest.mark.parametrize(("benchmark", "split"), [("tofu", "forget05"), ("muse", "Books"), ("wmdp", "bio")])
def test_gpu_grid_composes_with_one_schedule(ou_imported, benchmark, split, tmp_path) -> None:
    grid = _grid(ou_imported, benchmark, split, tmp_path)
    steps = _selected(grid, ("eval", "robustness") if benchmark == "tofu" else ("robustness",))
    cfgs = _compose(ou_imported, steps)
    schedules = set()
    for step in steps:
        cfg = cfgs[step.name]
        if step.kind != "train":
            assert cfg.mode == "eval" and OmegaConf.select(cfg, "model.model_args.pretrained_model_name_or_path")
            continue
        args = cfg.trainer.args
        label = step.run.rsplit("_", 1)[1]
        name, _, teacher = label.partition("-")  # a robustifier's run: NAME-TEACHER
        method = rp.METHODS[benchmark][name]
        assert cfg.trainer.handler == (method.trainer or method.name)
        assert args.eval_strategy == "no" and args.do_eval is False
        if method.robustifies:
            assert cfg.trainer.method_args.teacher == str(tmp_path / "out" / step.run.replace(label, teacher))
            continue
        processes = int(step.argv[step.argv.index("--num_processes") + 1]) if "accelerate" in step.argv else 1
        batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * processes
        budget = args.get("max_steps", -1) if args.get("max_steps", -1) > 0 else args.num_train_epochs
        if benchmark == "wmdp":  # each WMDP experiment keeps its own batch shape; the examples per step agree
            schedules.add((batch, budget))
        else:
            schedules.add((batch, float(args.learning_rate), budget))
    expected = {"tofu": {(32, 1e-5, 10)}, "muse": {(64, 1e-5, 10)}, "wmdp": {(16, 80)}}[benchmark]
    assert schedules == expected


def test_cpu_grid_composes(ou_imported, tmp_path) -> None:
    demo = tmp_path / "demo"
    for split, names in {"forget01": ["A"], "forget05": ["A", "B"], "forget10": ["A", "B", "C"]}.items():
        (demo / "locuslab" / "TOFU").mkdir(parents=True, exist_ok=True)
        rows = [{"question": "q", "answer": "a", "author": n} for n in names]
        (demo / "locuslab" / "TOFU" / f"{split}.json").write_text(json.dumps(rows))
    context = rp.DemoContext(
        workdir=demo,
        model=demo / "saves" / "finetune" / "demo_full",
        demo_split="forget05",
        forget_authors={"forget01": ("A",), "forget05": ("A", "B"), "forget10": ("A", "B", "C")},
        num_layers=4,
    )
    grid = _grid(ou_imported, "tofu", "forget05", tmp_path, profile="cpu", demo=context, python="python")
    cfgs = _compose(ou_imported, _selected(grid, ("robustness",), trains=("RMU", "DUET", "IdkDPO")))
    rmu = cfgs["train tofu_demo_forget05_RMU"]
    assert rmu.trainer.method_args.module_regex == r"model\.layers\.1"
    duet = cfgs["train tofu_demo_forget05_DUET"]
    assert list(duet.trainer.method_args.prefix.concepts) == ["A", "B"]
    assert duet.trainer.args.optim == "adamw_torch" and duet.model.model_args.torch_dtype == "float32"
    assert cfgs["train tofu_demo_forget05_IdkDPO"].data.forget.TOFU_QA_forget_idk.args.idk_path == str(
        tmp_path / "out" / "idk.jsonl"
    )
    robust = cfgs["robustness tofu_demo_forget05_original"]
    assert list(robust.eval.tofu.metrics.relearn_attack.learning_rates) == [1e-4, 1e-3]
    heldout = robust.eval.tofu.metrics.relearn_heldout
    assert heldout.mode == "heldout_facts" and heldout.concept_size == context.qa_per_author
    assert list(heldout.seeds) == [0, 1] and heldout.pre_compute.forget_Q_A_ROUGE.generation_args.max_new_tokens == 32
    for metric in ("directional_ablation", "embedding_attack"):
        assert robust.eval.tofu.metrics[metric].concept_size == context.qa_per_author
    assert robust.model.model_args.device_map == "cpu"


@pytest.fixture
def demo_context(tmp_path: Path) -> rp.DemoContext:
    """A demo folder's data (the fictitious authors in TOFU's layout) and context; no model is loaded to compose."""
    from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout

    demo = tmp_path / "demo"
    dataset = build_dataset(n_authors=20, qa_per_author=4, seed=0)
    write_hub_layout(dataset, demo)
    return rp.DemoContext(
        workdir=demo,
        model=demo / "saves" / "finetune" / "demo_full",
        demo_split="forget05",
        forget_authors={s: tuple(dataset.forget_authors(s)) for s in ("forget01", "forget05", "forget10")},
        num_layers=4,
    )


@pytest.mark.parametrize(("benchmark", "split"), [("muse", "News"), ("wmdp", "cyber")])
def test_cpu_muse_and_wmdp_grids_compose(ou_imported, benchmark, split, demo_context, tmp_path) -> None:
    grid = _grid(ou_imported, benchmark, split, tmp_path, profile="cpu", demo=demo_context, python="python")
    evals = [s for s in grid.steps if s.kind != "train"]
    steps = [s for s in grid.steps if s.kind == "train"] + [evals[0], evals[1], evals[2]]
    cfgs = _compose(ou_imported, steps)
    forget = list(demo_context.forget_authors["forget05"])
    for step in steps:
        cfg = cfgs[step.name]
        evaluated = tmp_path / "out" / step.run if step.kind != "train" else demo_context.model
        if step.run.endswith(("_original", "_retain-only")):
            evaluated = demo_context.model if step.run.endswith("_original") else demo_context.retain_model
        assert cfg.model.model_args.pretrained_model_name_or_path == str(evaluated), step.name
        assert cfg.model.tokenizer_args.pretrained_model_name_or_path == str(evaluated), step.name
        assert cfg.model.template_args.apply_chat_template is True and cfg.model.template_args.system_prompt is None
        if step.kind != "train":
            continue
        label = step.run.rsplit("_", 1)[1]
        name, _, teacher = label.partition("-")  # a robustifier's run: NAME-TEACHER
        method = rp.METHODS[benchmark][name]
        args = cfg.trainer.args
        assert args.eval_strategy == "no" and args.optim == "adamw_torch" and args.bf16 is False
        if method.robustifies:
            assert args.max_steps == 500 and cfg.trainer.method_args.teacher.endswith(teacher)
            continue
        # The demo's schedule; WMDP's 80-step budget lifted.
        assert (args.num_train_epochs, float(args.learning_rate), args.per_device_train_batch_size) == (10, 1e-3, 8)
        assert args.get("max_steps", -1) == -1
        if rp.steered_prefix in method.cpu_overrides:
            assert list(cfg.trainer.method_args.prefix.concepts) == forget
            assert cfg.trainer.method_args.prefix.name == "never_heard_of"
        raw_text = benchmark == "muse" and "MUSE_forget" in cfg.data.forget  # OU's MUSE raw-text data
        assert raw_text == (rp.muse_raw_text_chunks in method.cpu_overrides), step.name
        if raw_text:
            assert cfg.data.forget.MUSE_forget.args.max_length == rp.CPU_MUSE_MAX_LENGTH
            assert cfg.data.forget.MUSE_forget.args.hf_args.path == "muse-bench/MUSE-News"
            assert cfg.data.retain.MUSE_retain.args.hf_args.split == "retain1"
        if label == "RMU":
            assert cfg.trainer.method_args.module_regex == r"model\.layers\.1"
            if benchmark == "wmdp":
                assert list(cfg.trainer.method_args.trainable_params_regex) == [
                    r"model\.layers\.(0|1)\.mlp\.down_proj\.weight"
                ]
        if benchmark == "wmdp":
            data = OmegaConf.to_container(cfg.data, resolve=True)
            files = json.dumps(data)
            assert "data/wmdp/wmdp-corpora/cyber-forget-corpus.jsonl" in files
    if benchmark == "muse":
        retain_only, original = cfgs[evals[0].name], cfgs[evals[1].name]
        assert retain_only.eval.muse.retain_logs_path is None
        logs = str(tmp_path / "out" / "muse_demo_News_retain-only" / "evals" / "MUSE_EVAL.json")
        assert original.eval.muse.retain_logs_path == logs
        assert original.eval.muse.metrics.privleak.reference_logs.retain_model_logs.path == logs
        assert (
            original.eval.muse.metrics.forget_knowmem_ROUGE.datasets.MUSE_forget_knowmem.args.few_shot_dataset_hf_args
            is None
        )
        robust = cfgs[evals[2].name].eval.muse.metrics
        for node, dataset in rp.MUSE_KNOWMEM["robustness"]:
            assert OmegaConf.select(robust, f"{node}.datasets.{dataset}.args.few_shot_dataset_hf_args") is None
            assert OmegaConf.select(robust, f"{node}.datasets.{dataset}.args.hf_args.path") == "muse-bench/MUSE-News"
        assert list(robust.relearn_attack.learning_rates) == [1e-4, 1e-3]
    else:
        plain, robust = cfgs[evals[0].name].eval.lm_eval, cfgs[evals[2].name].eval.lm_eval
        for lm_eval in (plain, robust):
            assert lm_eval.handler == "RobustLMEvalEvaluator"
            assert list(lm_eval.tasks) == ["demo_forget_mcq", "demo_general_mcq"]
            assert lm_eval.include_path == str(demo_context.workdir / "data" / "wmdp" / "demo-mcq")
            assert list(lm_eval.forget_tasks) == ["demo_forget_mcq"]
            assert lm_eval.simple_evaluate_args.apply_chat_template is True
        assert plain.attacks is None  # OU's evaluation, through the evaluator that reads include_path
        from duet_plugin.core.attacks.lm_eval_plan import AttackPlan

        plan = AttackPlan.from_config(OmegaConf.to_container(robust.attacks, resolve=True))
        assert [v.name for v in plan.variants] == ["int8", "int4", "relearn_lr0.0001", "relearn_lr0.001"]
