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
        method = rp.METHODS[benchmark]["UNDO" if label.startswith("UNDO-") else label]
        assert cfg.trainer.handler == (method.trainer or method.name)
        assert args.eval_strategy == "no" and args.do_eval is False
        if method.name == "UNDO":
            assert cfg.trainer.method_args.teacher == str(tmp_path / "out" / step.run.replace(label, label[5:]))
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
    assert robust.model.model_args.device_map == "cpu"
