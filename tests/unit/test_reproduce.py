"""The reproduction grids (duet_plugin.reproduce): every method's commands, OU's GPU settings, UNDO's dependency on
the unlearned run, the CPU profile's overrides, the method table (entries, not names; the plugin's methods found in
its trainer YAMLs), dry-run output, errors, and the runner's skip/fail behaviour."""

from __future__ import annotations

import dataclasses
import inspect
import io
import json
import shlex
import sys
from pathlib import Path

import pytest

from duet_plugin import reproduce as rp
from duet_plugin.openunlearning.cpu_overrides import eval_overrides, train_overrides


@pytest.fixture
def ou_root(tmp_path: Path) -> Path:
    """A stand-in OU checkout: what find_ou_root checks for."""
    root = tmp_path / "ou"
    (root / "src").mkdir(parents=True)
    (root / "configs").mkdir()
    for f in ("src/train.py", "src/eval.py", "configs/unlearn.yaml"):
        (root / f).write_text("")
    return root


AUTHORS = {"forget01": ["Ana Vel"], "forget05": ["Ana Vel", "Bo Rune"], "forget10": ["Ana Vel", "Bo Rune", "Cy Ott"]}


@pytest.fixture
def demo_dir(tmp_path: Path) -> Path:
    """A finished-demo stand-in: marker, fine-tuned model config, retain reference logs, TOFU-layout splits."""
    w = tmp_path / "demo"
    model = w / "saves" / "finetune" / "demo_full"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"num_hidden_layers": 6}))
    retain = w / "saves" / "eval" / "demo_retain"
    (retain / ".hydra").mkdir(parents=True)
    (retain / "TOFU_EVAL.json").write_text("{}")
    (retain / ".hydra" / "config.yaml").write_text("forget_split: forget05\nholdout_split: holdout05\n")
    data = w / "locuslab" / "TOFU"
    data.mkdir(parents=True)
    for split, names in AUTHORS.items():
        rows = [{"question": f"Who is {n}?", "answer": "x", "author": n} for n in names for _ in range(2)]
        (data / f"{split}.json").write_text(json.dumps(rows))
    (w / ".duet-plugin-demo").write_text("demo\n")
    return w


def grid(benchmark: str, ou_root: Path, tmp_path: Path, **kw) -> rp.Grid:
    methods = kw.pop("methods", None)
    splits = kw.pop("splits", None)
    options = rp.GridOptions(
        benchmark=benchmark,
        ou_root=ou_root,
        output_root=tmp_path / "out",
        methods=rp.resolve_methods(benchmark, methods),
        splits=rp.resolve_splits(benchmark, splits),
        undo_teachers=kw.pop("undo_teachers", rp.UNDO_TEACHERS[benchmark]),
        **kw,
    )
    return rp.build_grid(options)


def by_run(g: rp.Grid, kind: str) -> dict[str, rp.Step]:
    return {s.run: s for s in g.steps if s.kind == kind}


def arg(step: rp.Step, key: str) -> str | None:
    """The value of the Hydra override ``key=...`` in ``step`` (None when absent)."""
    values = [a.split("=", 1)[1] for a in step.argv if a.split("=", 1)[0] == key]
    assert len(values) <= 1, f"{key} given twice in {step.argv}"
    return values[0] if values else None


@pytest.mark.parametrize("benchmark", rp.BENCHMARKS)
def test_every_method_is_trained_evaluated_and_attacked(benchmark, ou_root, tmp_path) -> None:
    split = rp.SPLITS[benchmark][0]
    g = grid(benchmark, ou_root, tmp_path, splits=[split])
    trains, evals, robust = by_run(g, "train"), by_run(g, "eval"), by_run(g, "robustness")
    model = rp.DEFAULT_MODELS[benchmark]
    labels = [m for m in rp.METHODS[benchmark] if m != "UNDO"]
    labels += [f"UNDO-{t}" for t in rp.UNDO_TEACHERS[benchmark]]
    for label in labels:
        run = f"{benchmark}_{model}_{split}_{label}"
        assert run in trains, f"no train step for {label}"
        out = arg(trains[run], "paths.output_dir")
        assert out == str(tmp_path / "out" / run)
        # OU's eval and the robustness eval both read the trained model and write next to it.
        assert arg(evals[run], "model.model_args.pretrained_model_name_or_path") == out
        assert arg(evals[run], "experiment") == f"eval/{benchmark}/default"
        assert arg(robust[run], "model.model_args.pretrained_model_name_or_path") == out
        assert arg(robust[run], "experiment") == f"eval/{benchmark}/robustness"
        assert arg(evals[run], "paths.output_dir") == f"{out}/evals"
        assert arg(robust[run], "paths.output_dir") == f"{out}/evals_robustness"
    # The model before unlearning is evaluated too (no train step), and first.
    original = f"{benchmark}_{model}_{split}_original"
    assert original not in trains and g.steps[0].run == original and g.steps[1].run == original
    n_runs = len(labels)
    assert len(g.steps) == 3 * n_runs + 2


def test_each_method_gets_its_ou_experiment_and_trainer(ou_root, tmp_path) -> None:
    trains = by_run(grid("tofu", ou_root, tmp_path, splits=["forget10"]), "train")

    def t(label: str) -> rp.Step:
        return trains[f"tofu_Llama-3.2-1B-Instruct_forget10_{label}"]

    for name in ("GradAscent", "GradDiff", "NPO", "SimNPO", "RMU", "UNDIAL", "CEU", "SatImp", "WGA"):
        assert arg(t(name), "experiment") == "unlearn/tofu/default"
        assert arg(t(name), "trainer") == name
    assert (arg(t("IdkDPO"), "experiment"), arg(t("IdkDPO"), "trainer")) == ("unlearn/tofu/idk", "DPO")
    # idk.yaml overrides the model config to the 3B one: OU's script passes model= explicitly, so do we.
    assert arg(t("IdkDPO"), "model") == "Llama-3.2-1B-Instruct"
    for name in ("DUET", "BiDistill"):
        assert arg(t(name), "experiment") == f"unlearn/tofu/{name.lower()}"
        assert arg(t(name), "trainer") is None
    assert arg(t("UNDO-DUET"), "experiment") == "unlearn/tofu/undo"
    assert (arg(t("GradDiff"), "forget_split"), arg(t("GradDiff"), "retain_split")) == ("forget10", "retain90")


def test_gpu_profile_mirrors_ou_scripts(ou_root, tmp_path) -> None:
    tofu = by_run(grid("tofu", ou_root, tmp_path, splits=["forget05"]), "train")
    npo = tofu["tofu_Llama-3.2-1B-Instruct_forget05_NPO"]
    # scripts/tofu_unlearn.sh: two GPUs under configs/accelerate/default_config.yaml, 4 x 4 per device.
    assert npo.argv[:4] == ("accelerate", "launch", "--config_file", "configs/accelerate/default_config.yaml")
    assert npo.env["CUDA_VISIBLE_DEVICES"] == "0,1" and npo.cwd == ou_root
    assert arg(npo, "trainer.args.per_device_train_batch_size") == "4"
    assert arg(npo, "trainer.args.gradient_accumulation_steps") == "4"
    assert arg(npo, "trainer.args.gradient_checkpointing") == "true"
    assert (
        arg(npo, "model.model_args.pretrained_model_name_or_path") == "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"
    )
    retain_logs = ou_root / "saves" / "eval" / "tofu_Llama-3.2-1B-Instruct_retain95" / "TOFU_EVAL.json"
    assert arg(npo, "retain_logs_path") == str(retain_logs)
    # DUET, BiDistill and UNDO run under the same accelerate launch on the same GPUs with the same batch.
    for label in ("DUET", "BiDistill", "UNDO-DUET", "UNDO-GradDiff"):
        ours = tofu[f"tofu_Llama-3.2-1B-Instruct_forget05_{label}"]
        assert ours.argv[: ours.argv.index("src/train.py")] == npo.argv[: npo.argv.index("src/train.py")], label
        assert ours.env == npo.env, label
        for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "gradient_checkpointing"):
            assert arg(ours, f"trainer.args.{key}") == arg(npo, f"trainer.args.{key}"), (label, key)
    # Learning rate and epochs are the experiment's, for every method: nobody overrides them.
    assert all(arg(s, "trainer.args.learning_rate") is None for s in tofu.values())

    muse = by_run(grid("muse", ou_root, tmp_path, splits=["Books"]), "train")
    assert arg(muse["muse_Llama-2-7b-hf_Books_SimNPO"], "trainer.args.gradient_accumulation_steps") == "8"
    assert arg(muse["muse_Llama-2-7b-hf_Books_DUET"], "trainer.args.gradient_accumulation_steps") == "8"
    assert "accelerate" in muse["muse_Llama-2-7b-hf_Books_UNDO-DUET"].argv
    assert arg(muse["muse_Llama-2-7b-hf_Books_GradDiff"], "data_split") == "Books"

    wmdp = by_run(grid("wmdp", ou_root, tmp_path, splits=["bio"]), "train")
    rmu = wmdp["wmdp_zephyr-7b-beta_bio_RMU"]
    assert arg(rmu, "experiment") == "unlearn/wmdp/default" and arg(rmu, "trainer") is None
    assert rmu.argv[0] == "python" and arg(rmu, "trainer.args.per_device_train_batch_size") is None
    assert arg(rmu, "retain_logs_path") is None
    assert all(s.argv[0] == "python" and arg(s, "trainer.args.max_steps") is None for s in wmdp.values())

    # On other GPU counts every method keeps the effective batch (4 x 4 x 2 = 32) too.
    for n, accumulation in ((1, "8"), (4, "2"), (8, "1")):
        other = by_run(grid("tofu", ou_root, tmp_path, splits=["forget05"], num_gpus=n), "train")
        for label in ("NPO", "DUET", "UNDO-DUET"):
            step = other[f"tofu_Llama-3.2-1B-Instruct_forget05_{label}"]
            assert arg(step, "trainer.args.gradient_accumulation_steps") == accumulation
            assert (step.argv[0] == "python") == (n == 1)
            assert n == 1 or step.argv[step.argv.index("--num_processes") + 1] == str(n)
    with pytest.raises(ValueError, match="--num-gpus dividing 8"):
        grid("tofu", ou_root, tmp_path, num_gpus=3)


def test_a_lora_method_runs_as_one_process_with_the_same_batch(ou_root, tmp_path, monkeypatch) -> None:
    """OU's accelerate config is DeepSpeed ZeRO-3, which refuses LoRA: such a method gets one process and the
    accumulation that keeps the effective batch."""
    monkeypatch.setitem(rp.METHODS["tofu"], "DUET", dataclasses.replace(rp.METHODS["tofu"]["DUET"], lora=True))
    trains = by_run(grid("tofu", ou_root, tmp_path, splits=["forget05"], methods=["DUET", "NPO"]), "train")
    lora, npo = trains["tofu_Llama-3.2-1B-Instruct_forget05_DUET"], trains["tofu_Llama-3.2-1B-Instruct_forget05_NPO"]
    assert lora.argv[:2] == ("python", "src/train.py") and lora.env["CUDA_VISIBLE_DEVICES"] == "0"
    assert arg(lora, "trainer.args.gradient_accumulation_steps") == "8"
    assert "accelerate" in npo.argv and arg(npo, "trainer.args.gradient_accumulation_steps") == "4"


def test_undo_reads_the_unlearned_runs_output_and_comes_after_it(ou_root, tmp_path) -> None:
    g = grid("tofu", ou_root, tmp_path, splits=["forget01"], methods=["GradDiff", "DUET", "UNDO"])
    names = [s.name for s in g.steps]
    trains = by_run(g, "train")
    for teacher in ("DUET", "GradDiff"):
        teacher_run = f"tofu_Llama-3.2-1B-Instruct_forget01_{teacher}"
        undo = trains[f"tofu_Llama-3.2-1B-Instruct_forget01_UNDO-{teacher}"]
        out = Path(arg(trains[teacher_run], "paths.output_dir"))
        assert arg(undo, "trainer.method_args.teacher") == str(out)
        assert out in undo.needs
        assert names.index(f"train {teacher_run}") < names.index(undo.name)
    # Other teachers on request; UNDO alone refers to outputs it cannot make.
    g2 = grid("wmdp", ou_root, tmp_path, splits=["cyber"], methods=["UNDO"], undo_teachers=["RMU"])
    (undo,) = by_run(g2, "train").values()
    assert arg(undo, "trainer.method_args.teacher") == str(tmp_path / "out" / "wmdp_zephyr-7b-beta_cyber_RMU")
    assert any("RMU" in n and "must already exist" in n for n in g2.notes)
    with pytest.raises(ValueError, match="own teacher"):
        grid("tofu", ou_root, tmp_path, undo_teachers=["UNDO"])


def test_robustness_evals_get_the_original_models_logs(ou_root, tmp_path) -> None:
    g = grid("muse", ou_root, tmp_path, splits=["News"], methods=["NPO"])
    robust = by_run(g, "robustness")
    original = tmp_path / "out" / "muse_Llama-2-7b-hf_News_original" / "evals_robustness" / "MUSE_EVAL.json"
    npo = robust["muse_Llama-2-7b-hf_News_NPO"]
    assert arg(npo, "original_logs_path") == str(original) and original in npo.needs
    assert arg(robust["muse_Llama-2-7b-hf_News_original"], "original_logs_path") is None
    assert arg(robust["muse_Llama-2-7b-hf_News_original"], "model.model_args.pretrained_model_name_or_path") == (
        "muse-bench/MUSE-News_target"
    )
    wmdp = by_run(grid("wmdp", ou_root, tmp_path, splits=["cyber"], methods=["RMU"]), "robustness")
    assert all(arg(s, "original_logs_path") is None for s in wmdp.values())  # lm-eval robustness has none


def test_stages_select_commands(ou_root, tmp_path) -> None:
    g = grid("tofu", ou_root, tmp_path, splits=["forget05"], methods=["NPO"], stages=("train",))
    assert [s.kind for s in g.steps] == ["train"]
    with pytest.raises(ValueError, match="stage"):
        grid("tofu", ou_root, tmp_path, stages=("train", "deploy"))


def test_cpu_profile_uses_the_demo_and_the_cpu_overrides(ou_root, demo_dir, tmp_path) -> None:
    demo = rp.load_demo_context(demo_dir, threads=1)
    assert demo.demo_split == "forget05" and demo.forget_authors["forget10"] == tuple(AUTHORS["forget10"])
    g = grid("tofu", ou_root, tmp_path, profile="cpu", demo=demo, python=sys.executable)
    model = demo_dir / "saves" / "finetune" / "demo_full"
    for step in g.steps:
        assert step.cwd == demo_dir and step.env["HF_HUB_OFFLINE"] == "1" and step.env["OMP_NUM_THREADS"] == "1"
        assert step.argv[0] == sys.executable and Path(step.argv[1]).parent == ou_root / "src"
        assert "accelerate" not in step.argv
        if step.kind == "train":
            assert set(train_overrides(model)) <= set(step.argv), step.name
            assert arg(step, "trainer.args.learning_rate") == "0.001"  # the demo's unlearning schedule
        else:
            evaluated = arg(step, "model.model_args.pretrained_model_name_or_path")
            assert set(eval_overrides(evaluated)) <= set(step.argv), step.name
    trains = by_run(g, "train")
    duet = trains["tofu_demo_forget10_DUET"]
    assert arg(duet, "trainer.method_args.prefix.concepts") == '["Ana Vel","Bo Rune","Cy Ott"]'
    assert arg(trains["tofu_demo_forget10_BiDistill"], "trainer.method_args.prefix.placement") == "user"
    # RMU steers a layer the 6-layer demo model has (OU's default, layer 7, does not exist there).
    assert arg(trains["tofu_demo_forget05_RMU"], "trainer.method_args.module_regex") == r"model\.layers\.2"
    idk = Path(arg(trains["tofu_demo_forget05_IdkDPO"], "data.forget.TOFU_QA_forget_idk.args.idk_path"))
    assert idk in g.files and g.files[idk].strip()
    # forget_quality's reference exists for the demo's own split only.
    evals = by_run(g, "eval")
    assert arg(evals["tofu_demo_forget05_NPO"], "retain_logs_path") == str(demo.retain_logs)
    assert arg(evals["tofu_demo_forget01_NPO"], "retain_logs_path") is None
    robust = by_run(g, "robustness")["tofu_demo_forget05_NPO"]
    assert arg(robust, "eval.tofu.metrics.relearn_attack.steps") == "10"
    # held-out relearning: one half of the forget authors relearned, the other scored (the demo's authors: 5 QA each)
    assert "+eval/tofu_metrics@eval.tofu.metrics.relearn_heldout=relearn_heldout" in robust.argv
    assert arg(robust, "eval.tofu.metrics.relearn_heldout.concept_size") == str(demo.qa_per_author) == "5"
    assert arg(robust, "eval.tofu.metrics.relearn_heldout.learning_rates") == "[0.0001,0.001]"
    assert "eval.tofu.metrics.relearn_heldout.seeds" not in " ".join(by_run(g, "eval")["tofu_demo_forget05_NPO"].argv)


def test_a_pretrained_models_demo_settings_shape_the_cpu_grid(ou_root, demo_dir, tmp_path) -> None:
    from duet_plugin.demo.pipeline import SETTINGS_FILE, DemoSettings

    tiny = rp.load_demo_context(demo_dir, threads=1)  # a folder from before the settings were written: defaults
    assert (tiny.unlearn_lr, tiny.recovery_steps) == (DemoSettings().unlearn_lr, DemoSettings().recovery_steps)
    smol = DemoSettings.profile_settings("default", "smollm2")
    assert smol.pretrained and smol.forget_split == "forget10" and smol.unlearn_lr < DemoSettings().unlearn_lr
    smol.save(demo_dir / SETTINGS_FILE)
    assert DemoSettings.load(demo_dir / SETTINGS_FILE) == smol
    demo = rp.load_demo_context(demo_dir, threads=1)
    assert (demo.unlearn_lr, demo.unlearn_batch_size) == (smol.unlearn_lr, smol.unlearn_batch_size)
    g = grid("tofu", ou_root, tmp_path, profile="cpu", demo=demo, python=sys.executable, splits=["forget10"])
    trains = by_run(g, "train")
    assert arg(trains["tofu_demo_forget10_NPO"], "trainer.args.learning_rate") == f"{smol.unlearn_lr}"
    assert arg(trains["tofu_demo_forget10_BiDistill"], "trainer.args.logging_steps") == "1"  # terms per step
    undo = trains["tofu_demo_forget10_UNDO-DUET"]
    assert arg(undo, "trainer.args.max_steps") == str(smol.recovery_steps)
    assert arg(undo, "trainer.args.learning_rate") == f"{smol.recovery_lr:g}"
    assert arg(undo, "trainer.args.per_device_train_batch_size") == str(smol.recovery_batch_size)
    assert arg(undo, "trainer.method_args.recovery_eval_steps") == str(smol.recovery_steps // 20)


def test_a_variant_overrides_training_under_its_own_run_names(ou_root, demo_dir, tmp_path, capsys) -> None:
    """--override/--tag: each override replaces the grid's own value of its key in every training command (given
    once), the trained runs are named <label>-TAG (UNDO included, its teacher the variant's own), and the untrained
    references keep their names, so a variant never overwrites or reuses the grid's runs."""
    demo = rp.load_demo_context(demo_dir, threads=1)
    kw = dict(profile="cpu", demo=demo, python=sys.executable, splits=["forget05"], methods=["DUET", "UNDO", "NPO"])
    plain = grid("tofu", ou_root, tmp_path, **kw)
    overrides = ("trainer.args.seed=3", "+trainer.method_args.extra=1")
    g = grid("tofu", ou_root, tmp_path, overrides=overrides, tag="s3", undo_teachers=("DUET",), **kw)
    trains = by_run(g, "train")
    differ = ("task_name", "paths", "trainer.method_args.teacher")  # the run's names, UNDO's teacher (below)
    assert sorted(trains) == [
        "tofu_demo_forget05_DUET-s3",
        "tofu_demo_forget05_NPO-s3",
        "tofu_demo_forget05_UNDO-DUET-s3",
    ]
    for name, step in trains.items():
        assert arg(step, "trainer.args.seed") == "3"
        assert "+trainer.method_args.extra=1" in step.argv
        assert arg(step, "paths.output_dir") == str(tmp_path / "out" / name)  # still last: the run's own folder
        base = by_run(plain, "train")[name.removesuffix("-s3")]
        assert arg(base, "trainer.args.seed") == "0"
        assert [a for a in step.argv if not a.startswith(("trainer.args.seed", "+trainer", *differ))] == [
            a for a in base.argv if not a.startswith(("trainer.args.seed", *differ))
        ]  # nothing else differs
    assert arg(trains["tofu_demo_forget05_UNDO-DUET-s3"], "trainer.method_args.teacher") == str(
        tmp_path / "out" / "tofu_demo_forget05_DUET-s3"
    )
    evaluated = {s.run for s in g.steps if s.kind != "train"}
    assert {"tofu_demo_forget05_original", "tofu_demo_forget05_retain-only", "tofu_demo_forget05_NPO-s3"} <= evaluated
    assert not any(r.endswith(("_NPO", "_DUET", "_UNDO-DUET")) for r in evaluated)
    args = ["--ou-root", str(ou_root), "--profile", "cpu", "--demo-workdir", str(demo_dir), "--dry-run"]
    for extra, message in (
        (["--override", "trainer.args.seed=1"], "needs --tag"),
        (["--tag", "x"], "no --override"),
        (["--override", "trainer.args.seed=1", "--tag", "a/b"], "letters, digits"),
        (["--override", "trainer.args.seed", "--tag", "x"], "not a Hydra override"),
    ):
        assert rp.main("tofu", [*args, *extra]) == 2
        assert message in capsys.readouterr().err


def test_cpu_profile_errors(ou_root, demo_dir, tmp_path, capsys) -> None:
    # MUSE's privleak needs the demo's retain-only model, which this stand-in lacks.
    assert rp.main("muse", ["--ou-root", str(ou_root), "--profile", "cpu", "--demo-workdir", str(demo_dir)]) == 2
    assert "demo_retain is missing" in capsys.readouterr().err
    assert rp.main("wmdp", ["--ou-root", str(ou_root), "--profile", "cpu", "--demo-workdir", str(demo_dir)]) == 2
    assert "retain-only model" in capsys.readouterr().err
    assert rp.main("tofu", ["--ou-root", str(ou_root), "--profile", "cpu", "--dry-run"]) == 2
    assert "--demo-workdir" in capsys.readouterr().err
    (demo_dir / ".duet-plugin-demo").unlink()
    assert rp.main("tofu", ["--ou-root", str(ou_root), "--profile", "cpu", "--demo-workdir", str(demo_dir)]) == 2
    assert "not a duet-plugin demo folder" in capsys.readouterr().err


def test_dry_run_prints_every_command_and_runs_nothing(ou_root, demo_dir, tmp_path) -> None:
    out_root = tmp_path / "runs"
    common = ["--ou-root", str(ou_root), "--output-root", str(out_root), "--dry-run"]
    for argv in (common, [*common, "--profile", "cpu", "--demo-workdir", str(demo_dir)]):
        buf = io.StringIO()
        assert rp.main("tofu", argv, out=buf) == 0
        text = buf.getvalue()
        commands = [line for line in text.splitlines() if line.startswith("cd ")]
        # Per split: 14 runs (12 methods besides UNDO, UNDO on 2 teachers) x 3 commands + the original's 2; on the
        # CPU also the demo's retain-only model under attack, on the demo's split (the attacks' floor).
        cpu = "--profile" in argv
        assert len(commands) == 3 * (3 * 14 + 2) + cpu
        assert ("robustness tofu_demo_forget05_retain-only" in text) == cpu
        for method in rp.METHODS["tofu"]:
            assert f"_{method}" in text
        # Each printed line is a shell command that parses back to the step's argv.
        cwd, cmd = commands[2][3:].split(" && ", 1)
        assert shlex.split(cwd) == [str(ou_root if "--profile" not in argv else demo_dir)]
        assert "src/train.py" in cmd or "train.py" in cmd
    assert not out_root.exists()


def test_method_names_are_checked(ou_root, capsys) -> None:
    assert [m.name for m in rp.resolve_methods("tofu", ["ce-u", "idkdpo", "DUET"])] == ["IdkDPO", "CEU", "DUET"]
    with pytest.raises(ValueError) as err:
        rp.resolve_methods("tofu", ["GradDif"])
    for name in rp.METHODS["tofu"]:
        assert name in str(err.value)
    with pytest.raises(ValueError, match=r"not run on muse: .*raw text.*Valid methods for muse"):
        rp.resolve_methods("muse", ["IdkDPO"])
    assert rp.main("wmdp", ["--ou-root", str(ou_root), "--methods", "NPO", "--dry-run"]) == 2
    err_text = capsys.readouterr().err
    assert "NPO is not run on wmdp" in err_text and "RMU, DUET, BiDistill, UNDO" in err_text
    assert rp.main("tofu", ["--ou-root", str(ou_root), "--splits", "forget07", "--dry-run"]) == 2
    assert "forget01, forget05, forget10" in capsys.readouterr().err


def test_list_methods_names_sources_and_skips(capsys) -> None:
    assert rp.main("muse", ["--list-methods"]) == 0
    text = capsys.readouterr().out
    assert "scripts/muse_unlearn.sh" in text and "UNDIAL      skipped" in text


def _step(tmp_path: Path, code: str, needs: tuple[Path, ...] = ()) -> rp.Step:
    return rp.Step("train", "r", (sys.executable, "-c", code), tmp_path, tmp_path / "r", {"X_TEST": "1"}, needs)


def test_run_grid_logs_marks_skips_and_reruns(tmp_path) -> None:
    step = _step(tmp_path, "import os; print('ran', os.environ['X_TEST'])")
    g = rp.Grid("tofu", "gpu", [step], files={tmp_path / "f.txt": "hello\n"})
    out = io.StringIO()
    rp.run_grid(g, out=out)
    assert "ran 1" in step.log.read_text() and step.marker.read_text() == step.shell()
    assert (tmp_path / "f.txt").read_text() == "hello\n"
    step.log.write_text("")
    rp.run_grid(g, out=out)
    assert step.log.read_text() == "" and "skipped" in out.getvalue()  # same command: not run again
    rp.run_grid(g, rerun=True, out=out)
    assert "ran 1" in step.log.read_text()
    changed = _step(tmp_path, "print('changed')")
    rp.run_grid(rp.Grid("tofu", "gpu", [changed]), out=out)
    assert "changed" in changed.log.read_text()  # another command in the same folder runs


def test_run_grid_stops_on_failure_and_missing_inputs(tmp_path) -> None:
    bad = _step(tmp_path, "import sys; print('boom'); sys.exit(3)")
    with pytest.raises(rp.StepFailed, match=r"(?s)exit 3.*boom") as err:
        rp.run_grid(rp.Grid("tofu", "gpu", [bad]), out=io.StringIO())
    assert str(bad.log) in str(err.value) and not bad.marker.exists()
    missing = tmp_path / "teacher"
    code = (sys.executable, "-c", "print('should not run')")
    waiting = rp.Step("train", "w", code, tmp_path, tmp_path / "w", {}, (missing,))
    with pytest.raises(rp.StepFailed, match="teacher"):
        rp.run_grid(rp.Grid("tofu", "gpu", [waiting]), out=io.StringIO())
    assert not waiting.log.exists()


# -- CPU profiles of MUSE and WMDP: stand-ins written into the demo folder ------------------------------------


@pytest.fixture
def full_demo(tmp_path: Path) -> Path:
    """A finished-demo stand-in with the demo's real data layout (fictitious authors in TOFU's layout), model
    configs of the fine-tuned and retain-only models and the retain reference logs."""
    from duet_plugin.demo.fictitious_authors import build_dataset, write_hub_layout

    w = tmp_path / "demo"
    write_hub_layout(build_dataset(n_authors=20, qa_per_author=4, seed=0), w)
    for name in ("demo_full", "demo_retain"):
        (w / "saves" / "finetune" / name).mkdir(parents=True)
        (w / "saves" / "finetune" / name / "config.json").write_text(json.dumps({"num_hidden_layers": 4}))
    retain = w / "saves" / "eval" / "demo_retain"
    (retain / ".hydra").mkdir(parents=True)
    (retain / "TOFU_EVAL.json").write_text("{}")
    (retain / ".hydra" / "config.yaml").write_text("forget_split: forget05\n")
    (w / ".duet-plugin-demo").write_text("demo\n")
    return w


def cpu_grid(benchmark: str, ou_root: Path, demo_dir: Path, tmp_path: Path, **kw) -> rp.Grid:
    demo = rp.load_demo_context(demo_dir, threads=1)
    return grid(benchmark, ou_root, tmp_path, profile="cpu", demo=demo, python=sys.executable, **kw)


def rows_of(g: rp.Grid, path: Path) -> list[dict]:
    text = g.files[path]
    return json.loads(text) if path.suffix == ".json" else [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("benchmark", ["muse", "wmdp"])
def test_cpu_grid_has_every_method_on_the_demo_model(benchmark, ou_root, full_demo, tmp_path) -> None:
    g = cpu_grid(benchmark, ou_root, full_demo, tmp_path)
    model = full_demo / "saves" / "finetune" / "demo_full"
    labels = [m for m in rp.METHODS[benchmark] if m != "UNDO"] + [f"UNDO-{t}" for t in rp.UNDO_TEACHERS[benchmark]]
    trains, evals, robust = by_run(g, "train"), by_run(g, "eval"), by_run(g, "robustness")
    for split in rp.SPLITS[benchmark]:
        for label in labels:
            run = f"{benchmark}_demo_{split}_{label}"
            assert arg(trains[run], "data_split") == split and arg(evals[run], "data_split") == split
            # Every run starts from the demo's fine-tuned model (UNDO's teacher is the unlearned run's output).
            assert arg(trains[run], "model.model_args.pretrained_model_name_or_path") == str(model)
            out = arg(trains[run], "paths.output_dir")
            assert arg(evals[run], "model.model_args.pretrained_model_name_or_path") == out
            assert arg(robust[run], "model.model_args.pretrained_model_name_or_path") == out
            steps = arg(trains[run], "trainer.args.max_steps")
            if label.startswith("UNDO"):  # scripts/demo_undo_relearn.py's schedule
                assert steps == "500" and arg(trains[run], "trainer.method_args.teacher") == str(trains[run].needs[0])
            else:  # the demo's unlearning schedule; WMDP's 80-step budget lifted so that the epochs count
                assert arg(trains[run], "trainer.args.num_train_epochs") == "10"
                assert arg(trains[run], "trainer.args.learning_rate") == "0.001"
                assert steps == ("-1" if benchmark == "wmdp" else None)
        original = f"{benchmark}_demo_{split}_original"
        assert arg(evals[original], "model.model_args.pretrained_model_name_or_path") == str(model)
    for step in g.steps:
        assert step.cwd == full_demo and step.argv[0] == sys.executable and "accelerate" not in step.argv
        assert arg(step, "model") == rp.CPU_MODEL  # the demo tokenizer's chat format
        assert arg(step, "model.template_args.system_prompt") == "null"
        if step.kind == "train":
            assert set(train_overrides(model)) <= set(step.argv), step.name
    # DUET and BiDistill tell the teacher to forget the demo's forget authors (the split the demo unlearns).
    demo = rp.load_demo_context(full_demo)
    concepts = "[" + ",".join(json.dumps(a) for a in demo.forget_authors["forget05"]) + "]"
    for label in ("DUET", "BiDistill"):
        step = trains[f"{benchmark}_demo_{rp.SPLITS[benchmark][0]}_{label}"]
        assert arg(step, "trainer.method_args.prefix.concepts") == concepts
        assert arg(step, "trainer.method_args.prefix.placement") == "user"
    rmu = trains[f"{benchmark}_demo_{rp.SPLITS[benchmark][0]}_RMU"]
    assert arg(rmu, "trainer.method_args.module_regex") == r"model\.layers\.1"


def test_cpu_muse_grid_evaluates_the_retain_only_model_first_and_wires_its_logs(ou_root, full_demo, tmp_path) -> None:
    g = cpu_grid("muse", ou_root, full_demo, tmp_path, splits=["News"])
    out = tmp_path / "out"
    logs = out / "muse_demo_News_retain-only" / "evals" / "MUSE_EVAL.json"
    names = [s.name for s in g.steps]
    assert names[:4] == [
        "eval muse_demo_News_retain-only",
        "eval muse_demo_News_original",
        "robustness muse_demo_News_original",
        "robustness muse_demo_News_retain-only",
    ]
    retain_only = g.steps[0]
    assert arg(retain_only, "model.model_args.pretrained_model_name_or_path") == str(
        full_demo / "saves" / "finetune" / "demo_retain"
    )
    assert arg(retain_only, "paths.output_dir") == str(logs.parent)
    for step in g.steps:
        if step.run.endswith("_retain-only"):  # the reference itself: OU's default (0.5) for its own privleak
            assert arg(step, "retain_logs_path") is None
            continue
        assert arg(step, "retain_logs_path") == str(logs), step.name  # as OU's scripts, also for training
        if step.kind != "train":
            assert logs in step.needs and names.index(step.name) > 0
    # The retain-only model's robustness is measured against the original, like every other run's.
    robust = by_run(g, "robustness")["muse_demo_News_retain-only"]
    assert arg(robust, "original_logs_path") == str(
        out / "muse_demo_News_original" / "evals_robustness" / "MUSE_EVAL.json"
    )
    # knowmem zero-shot everywhere it is measured; the demo's relearning attack.
    for step in g.steps:
        if step.kind == "train":
            continue
        zero_shot = [a for a in step.argv if a.endswith(".few_shot_dataset_hf_args=null")]
        assert len(zero_shot) == (2 if step.kind == "eval" else 2 + len(rp.MUSE_KNOWMEM["robustness"])), step.name
    robust = by_run(g, "robustness")["muse_demo_News_NPO"]
    assert arg(robust, "eval.muse.metrics.relearn_attack.learning_rates") == "[0.0001,0.001]"
    # OU's baselines and UNDO read raw-text chunks that fit the demo model's 1024 positions; DUET reads queries.
    trains = by_run(g, "train")
    for label in ("GradDiff", "RMU", "UNDO-DUET"):
        assert arg(trains[f"muse_demo_News_{label}"], "data.retain.MUSE_retain.args.max_length") == "512"
    assert arg(trains["muse_demo_News_DUET"], "data.retain.MUSE_retain.args.max_length") is None


def test_cpu_muse_data_forgets_the_demo_forget_authors(ou_root, full_demo, tmp_path) -> None:
    g = cpu_grid("muse", ou_root, full_demo, tmp_path)
    demo = rp.load_demo_context(full_demo)
    forget = demo.forget_authors["forget05"]
    others = set(demo.forget_authors["forget10"]) - set(forget)  # authors that stay on the retain side
    holdout = {r["author"] for r in json.loads((full_demo / "locuslab" / "TOFU" / "holdout05.json").read_text())}
    n_facts = len(json.loads((full_demo / "locuslab" / "TOFU" / "forget05.json").read_text()))
    for split in ("News", "Books"):
        repo = full_demo / "muse-bench" / f"MUSE-{split}"
        # Every config and split OU's MUSE data and eval configs read, and a card that names them.
        expected = {"raw_forget", "raw_retain1", "knowmem_forget_qa", "knowmem_forget_qa_icl", "knowmem_retain_qa"}
        expected |= {"knowmem_retain_qa_icl", "verbmem_forget", "privleak_forget", "privleak_holdout"}
        assert {p.stem for p in g.files if p.parent == repo and p.suffix == ".json"} == expected
        card = g.files[repo / "README.md"]
        assert all(f"path: {name}.json" in card for name in expected)
        raw = [r["text"] for r in rows_of(g, repo / "raw_forget.json")]
        # News: one document per fact, Books: one passage per author.
        assert len(raw) == (n_facts if split == "News" else len(forget))
        assert all(any(a in t for a in forget) for t in raw) and not any(a in t for t in raw for a in others)
        retain = [r["text"] for r in rows_of(g, repo / "raw_retain1.json")]
        assert not any(a in t for t in retain for a in forget) and any(a in t for t in retain for a in others)
        held = [r["text"] for r in rows_of(g, repo / "privleak_holdout.json")]
        assert all(any(a in t for a in holdout) for t in held)
        assert rows_of(g, repo / "privleak_forget.json") == rows_of(g, repo / "raw_forget.json")
        qa = rows_of(g, repo / "knowmem_forget_qa.json")
        assert len(qa) == n_facts and all(any(a in r["question"] for a in forget) for r in qa)
        assert not any(a in r["question"] for r in rows_of(g, repo / "knowmem_retain_qa.json") for a in forget)
        for row in rows_of(g, repo / "verbmem_forget.json"):  # a forget answer cut before the fact it states
            assert row["prompt"] and row["gt"] and any(a in row["prompt"] for a in forget)


def test_cpu_wmdp_grid_uses_local_stand_in_tasks(ou_root, full_demo, tmp_path) -> None:
    g = cpu_grid("wmdp", ou_root, full_demo, tmp_path, splits=["cyber"])
    mcq = full_demo / "data" / "wmdp" / "demo-mcq"
    evals, robust = by_run(g, "eval"), by_run(g, "robustness")
    for step in [*evals.values(), *robust.values()]:
        assert arg(step, "eval.lm_eval.tasks") == "[demo_forget_mcq,demo_general_mcq]"
        assert arg(step, "eval.lm_eval.include_path") == str(mcq)
        assert arg(step, "eval.lm_eval.forget_tasks") == "[demo_forget_mcq]"
        assert arg(step, "eval.lm_eval.simple_evaluate_args.apply_chat_template") == "true"
        assert arg(step, "retain_logs_path") is None and arg(step, "original_logs_path") is None
    for step in evals.values():  # OU's evaluation: the plugin's evaluator (include_path) without attacks
        assert arg(step, "experiment") == "eval/wmdp/default"
        assert (arg(step, "eval"), arg(step, "eval.lm_eval.attacks")) == ("lm_eval_robust", "null")
    for step in robust.values():
        assert arg(step, "experiment") == "eval/wmdp/robustness" and arg(step, "eval.lm_eval.attacks") is None
        assert arg(step, "eval.lm_eval.attacks.relearn.learning_rates") == "[0.0001,0.001]"
    assert arg(evals["wmdp_demo_cyber_retain-only"], "model.model_args.pretrained_model_name_or_path") == str(
        full_demo / "saves" / "finetune" / "demo_retain"
    )
    rmu = by_run(g, "train")["wmdp_demo_cyber_RMU"]
    assert arg(rmu, "trainer.method_args.trainable_params_regex") == r'["model\.layers\.(0|1)\.mlp\.down_proj\.weight"]'
    undo = by_run(g, "train")["wmdp_demo_cyber_UNDO-RMU"]
    assert arg(undo, "trainer.method_args.teacher") == arg(rmu, "paths.output_dir")

    # The files: corpora as OU's setup lays them out, tasks that are named as stand-ins, never as WMDP/MMLU.
    demo = rp.load_demo_context(full_demo)
    forget = demo.forget_authors["forget05"]
    corpora = full_demo / "data" / "wmdp" / "wmdp-corpora"
    assert {p for p in g.files if p.parent == corpora} == {
        corpora / "cyber-forget-corpus.jsonl",
        corpora / "cyber-retain-corpus.jsonl",
    }
    n_facts = len(json.loads((full_demo / "locuslab" / "TOFU" / "forget05.json").read_text()))
    lines = g.files[corpora / "cyber-forget-corpus.jsonl"].splitlines()
    assert len(lines) == n_facts and all(any(a in line for a in forget) for line in lines)
    assert not any(a in g.files[corpora / "cyber-retain-corpus.jsonl"] for a in forget)
    import yaml

    for task in ("demo_forget_mcq", "demo_general_mcq"):
        config = yaml.safe_load(g.files[mcq / f"{task}.yaml"])
        assert config["task"] == task and config["dataset_kwargs"]["data_files"]["test"] == str(mcq / f"{task}.jsonl")
        assert config["output_type"] == "multiple_choice"
        assert "not WMDP" in g.files[mcq / f"{task}.yaml"] or "not MMLU" in g.files[mcq / f"{task}.yaml"]
    tofu = full_demo / "locuslab" / "TOFU"
    answers = {r["question"]: r["answer"] for r in json.loads((tofu / "full.json").read_text())}
    questions = rows_of(g, mcq / "demo_forget_mcq.jsonl")
    assert len(questions) == n_facts and {q["answer"] for q in questions} == {0, 1, 2, 3}
    for q in questions:
        assert len(q["choices"]) == 4 and q["choices"][q["answer"]] == answers[q["question"]]
        assert any(a in q["question"] for a in forget)
    general = rows_of(g, mcq / "demo_general_mcq.jsonl")
    assert not any(a in q["question"] for q in general for a in forget)


def test_robustness_metrics_are_the_experiments_own() -> None:
    """--robustness-without checks names against ROBUSTNESS_METRICS: it must list what the configs compose."""
    import yaml

    configs = Path(rp.__file__).parent / "configs"
    for benchmark in ("tofu", "muse"):
        experiment = yaml.safe_load((configs / "experiment" / "eval" / benchmark / "robustness.yaml").read_text())
        nodes = [k for d in experiment["defaults"] if isinstance(d, dict) for k in d if "@" in k]
        prefix = f"/eval/{benchmark}_metrics@{rp.ROBUSTNESS_NODES[benchmark]}."
        assert all(n.startswith(prefix) for n in nodes)
        assert tuple(n.removeprefix(prefix) for n in nodes) == rp.ROBUSTNESS_METRICS[benchmark]
    attacks = yaml.safe_load((configs / "eval" / "lm_eval_robust.yaml").read_text())["attacks"]
    assert tuple(attacks) == rp.ROBUSTNESS_METRICS["wmdp"]


def test_robustness_without_leaves_metrics_out_of_robustness_evaluations_only(ou_root, demo_dir, tmp_path) -> None:
    full = cpu_grid("tofu", ou_root, demo_dir, tmp_path, splits=["forget05"], methods=["NPO"])
    lean = cpu_grid(
        "tofu", ou_root, demo_dir, tmp_path, splits=["forget05"], methods=["NPO"],
        robustness_without=("embedding_attack", "relearn_heldout"),
    )  # fmt: skip
    assert [s.argv for s in full.steps if s.kind != "robustness"] == [
        s.argv for s in lean.steps if s.kind != "robustness"
    ]
    robust = by_run(lean, "robustness")
    assert set(robust) == set(by_run(full, "robustness")) and len(robust) == 3  # original, retain-only, NPO
    for step in robust.values():
        # the experiment's metric deleted, with every setting of it; the profile's addition never added
        assert "~eval.tofu.metrics.embedding_attack" in step.argv
        mentions = [a for a in step.argv if "embedding_attack" in a or "relearn_heldout" in a]
        assert mentions == ["~eval.tofu.metrics.embedding_attack"], mentions
        # the rest of the suite keeps its CPU settings
        assert arg(step, "eval.tofu.metrics.relearn_attack.steps") == "10"
        assert arg(step, "eval.tofu.metrics.directional_ablation.concept_size") == "5"  # the demo's QA per author
    full_npo = by_run(full, "robustness")["tofu_demo_forget05_NPO"].argv
    assert "+eval/tofu_metrics@eval.tofu.metrics.relearn_heldout=relearn_heldout" in full_npo
    assert "~eval.tofu.metrics.embedding_attack" not in full_npo


def test_robustness_without_an_lm_eval_attack_sets_it_to_null(ou_root, full_demo, tmp_path) -> None:
    g = cpu_grid("wmdp", ou_root, full_demo, tmp_path, splits=["cyber"], robustness_without=("relearn",))
    for step in by_run(g, "robustness").values():
        assert arg(step, "eval.lm_eval.attacks.relearn") == "null"
        assert not any(a.startswith("eval.lm_eval.attacks.relearn.") for a in step.argv)


def test_robustness_without_an_unknown_metric_names_the_known_ones(ou_root, demo_dir, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"embeding_attack.*choose from .*embedding_attack, relearn_heldout"):
        cpu_grid("tofu", ou_root, demo_dir, tmp_path, robustness_without=("embeding_attack",))
    # held-out relearning is the CPU profile's addition: the GPU grid has no such metric to leave out
    with pytest.raises(ValueError, match="relearn_heldout: not a robustness metric of the tofu grid"):
        grid("tofu", ou_root, tmp_path, robustness_without=("relearn_heldout",))
    twice = ("prompt_attack", "prompt_attack")
    g = grid("tofu", ou_root, tmp_path, splits=["forget05"], methods=["NPO"], robustness_without=twice)
    assert all(s.argv.count("~eval.tofu.metrics.prompt_attack") == 1 for s in by_run(g, "robustness").values())


@pytest.mark.parametrize("benchmark", ["muse", "wmdp"])
def test_cpu_dry_run_writes_nothing(benchmark, ou_root, full_demo, tmp_path) -> None:
    before = sorted(p for p in full_demo.rglob("*"))
    buf = io.StringIO()
    argv = ["--ou-root", str(ou_root), "--profile", "cpu", "--demo-workdir", str(full_demo), "--dry-run"]
    assert rp.main(benchmark, argv, out=buf) == 0
    text = buf.getvalue()
    assert sorted(p for p in full_demo.rglob("*")) == before  # no data, no output folder
    written = [line.split(" ", 2)[2] for line in text.splitlines() if line.startswith("# writes ")]
    assert written and all(Path(p).is_relative_to(full_demo) and not Path(p).exists() for p in written)
    n_runs = len(rp.METHODS[benchmark]) - 1 + len(rp.UNDO_TEACHERS[benchmark])
    extra = 2  # the retain-only model's eval and robustness
    assert sum(line.startswith("cd ") for line in text.splitlines()) == len(rp.SPLITS[benchmark]) * (
        3 * n_runs + 2 + extra
    )
    if benchmark == "wmdp":
        assert "wmdp_cyber" not in text and "mmlu" not in text  # OU's Hub tasks are never named


def test_cpu_grid_runs_write_the_stand_ins_before_the_first_command(ou_root, full_demo, tmp_path) -> None:
    g = cpu_grid("wmdp", ou_root, full_demo, tmp_path, splits=["bio"], methods=["RMU"], stages=("train",))
    (step,) = g.steps
    seen = tmp_path / "seen.txt"
    corpus = full_demo / "data" / "wmdp" / "wmdp-corpora" / "bio-forget-corpus.jsonl"
    probe = f"import pathlib; pathlib.Path({str(seen)!r}).write_text(pathlib.Path({str(corpus)!r}).read_text())"
    g.steps = [rp.Step(step.kind, step.run, (sys.executable, "-c", probe), step.cwd, step.run_dir, {}, ())]
    rp.run_grid(g, out=io.StringIO())
    assert seen.read_text() == g.files[corpus]
    # bio: one passage per author (WMDP bio's papers), cyber: one line per fact.
    assert len(g.files[corpus].splitlines()) == len(rp.load_demo_context(full_demo).forget_authors["forget05"])


# -- the method table: entries, not names; the plugin's methods from its trainer YAMLs --------------------------


def test_the_builder_reads_entries_not_names(ou_root, demo_dir, tmp_path, monkeypatch) -> None:
    """Entries copied under new names keep their overrides, files, schedules and roles, and entries stripped of them
    under the old names get none: the builder keys nothing on a method's name."""
    table = rp.METHODS["tofu"]
    for name in ("RMU", "IdkDPO", "DUET", "UNDO"):
        monkeypatch.setitem(table, f"My{name}", dataclasses.replace(table[name], name=f"My{name}"))
    monkeypatch.setitem(table, "RMU", dataclasses.replace(table["RMU"], cpu_overrides=()))
    plain = dataclasses.replace(table["UNDO"], robustifies=False, cpu_schedule=rp.demo_unlearning_schedule)
    monkeypatch.setitem(table, "UNDO", plain)
    names = ["GradDiff", "RMU", "DUET", "UNDO", "MyRMU", "MyIdkDPO", "MyDUET", "MyUNDO"]
    demo = rp.load_demo_context(demo_dir, threads=1)
    g = grid("tofu", ou_root, tmp_path, profile="cpu", demo=demo, methods=names, splits=["forget05"])
    trains = by_run(g, "train")

    def train(label: str) -> rp.Step:
        return trains[f"tofu_demo_forget05_{label}"]

    assert arg(train("MyRMU"), "trainer.method_args.module_regex") == r"model\.layers\.2"
    assert arg(train("RMU"), "trainer.method_args.module_regex") is None
    idk = Path(arg(train("MyIdkDPO"), "data.forget.TOFU_QA_forget_idk.args.idk_path"))
    assert idk in g.files and arg(train("MyIdkDPO"), "trainer") == "DPO"
    prefix = [a for a in train("DUET").argv if a.startswith("trainer.method_args.prefix.")]
    assert (
        len(prefix) == 3 and [a for a in train("MyDUET").argv if a.startswith("trainer.method_args.prefix.")] == prefix
    )
    for teacher in ("DUET", "GradDiff"):  # MyUNDO robustifies every teacher, with the recovery schedule
        step = train(f"MyUNDO-{teacher}")
        assert arg(step, "trainer.method_args.teacher") == arg(train(teacher), "paths.output_dir")
        assert arg(step, "trainer.args.max_steps") == "500" and arg(step, "experiment") == "unlearn/tofu/undo"
        assert f"tofu_demo_forget05_UNDO-{teacher}" not in trains
    # UNDO's entry without the role is trained once, on the demo's schedule, from nobody's output.
    assert arg(train("UNDO"), "trainer.method_args.teacher") is None
    assert arg(train("UNDO"), "trainer.args.num_train_epochs") == "10" and not train("UNDO").needs
    # And the builder's source names no method.
    source = "".join(inspect.getsource(o) for o in (rp._Runs, rp._Launcher, rp._GridBuilder, rp.build_grid))
    assert not [n for n in {n for t in rp.METHODS.values() for n in t} if f'"{n}"' in source]


def _yaml(folder: Path, name: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_the_plugins_methods_come_from_its_trainer_yamls() -> None:
    for benchmark in rp.BENCHMARKS:
        ours, skipped = rp.plugin_methods(benchmark)
        assert [m.name for m in ours] == ["DUET", "BiDistill", "UNDO"] and skipped == {}
        assert [m.robustifies for m in ours] == [False, False, True]
        assert all(m.experiment == f"unlearn/{benchmark}/{m.name.lower()}" and m.trainer is None for m in ours)
        assert all(m.source == rp.PLUGIN_SOURCE and not m.lora for m in ours)
        assert [rp.steered_prefix in m.cpu_overrides for m in ours] == [True, True, False]
        # UNDO's MUSE experiment reads OU's raw-text chunks, DUET's and BiDistill's read queries.
        assert [rp.muse_raw_text_chunks in m.cpu_overrides for m in ours] == [False, False, benchmark == "muse"]


def test_trainer_configs_inherit_method_args_down_their_defaults(tmp_path) -> None:
    _yaml(tmp_path, "_distill.yaml", "method_args:\n  prefix: {name: a, placement: auto}\n  top_k: 10\n")
    _yaml(tmp_path, "Base.yaml", "defaults: [finetune, _distill]\nhandler: Base\nmethod_args: {teacher: precomputed}\n")
    child = "defaults:\n  - Base\n  - _self_\nhandler: Child\nmethod_args:\n  prefix: {placement: user}\n  top_k: 5\n"
    _yaml(tmp_path, "Child.yaml", child)
    _yaml(tmp_path, "Loop.yaml", "defaults: [Loop]\nhandler: Loop\nmethod_args:\n  teacher: null\n")
    configs = rp.read_trainer_configs([tmp_path])
    assert configs["Child"].parents == ("Base",) and configs["Base"].parents == ("_distill",)
    assert configs["Child"].method_args == {
        "prefix": {"name": "a", "placement": "user"},
        "top_k": 5,
        "teacher": "precomputed",
    }
    assert configs["Child"].steered and not configs["Child"].robustifies
    assert configs["Loop"].robustifies and configs["Loop"].method_args == {"teacher": None}
    assert not configs["_distill"].is_method and configs["Base"].is_method


def test_a_new_trainer_yaml_joins_the_grid_with_no_edit(ou_root, full_demo, tmp_path) -> None:
    """A distillation trainer that inherits DUET (no experiment of its own) trains with DUET's experiment,
    trainer=KLDistill and the demo's prefix; one that inherits UNDO robustifies every teacher. Shared bases (_*.yaml),
    YAMLs without handler and trainers with no experiment are not trained."""
    extra = tmp_path / "trainers"
    _yaml(extra, "KLDistill.yaml", "defaults: [DUET]\nhandler: KLDistill\nmethod_args:\n  distance: kl\n")
    _yaml(extra, "Polish.yaml", "defaults:\n  - UNDO\nhandler: Polish\n")
    _yaml(extra, "_shared.yaml", "handler: Shared\nmethod_args:\n  top_k: 3\n")
    _yaml(extra, "notes.yaml", "method_args:\n  top_k: 3\n")
    _yaml(extra, "Orphan.yaml", "defaults: [finetune, _shared]\nhandler: Orphan\n")
    dirs = (extra,)
    order = [m.name for m in rp.resolve_methods("tofu", None, dirs)]
    assert order[-5:] == ["DUET", "BiDistill", "KLDistill", "UNDO", "Polish"] and "Shared" not in order
    with pytest.raises(ValueError, match=r"Orphan is not run on tofu: .*no experiment unlearn/tofu/orphan"):
        rp.resolve_methods("tofu", ["Orphan"], dirs)
    with pytest.raises(ValueError, match="Unknown method 'notes'"):
        rp.resolve_methods("tofu", ["notes"], dirs)

    demo = rp.load_demo_context(full_demo, threads=1)
    options = rp.GridOptions(
        benchmark="muse",
        ou_root=ou_root,
        output_root=tmp_path / "out",
        profile="cpu",
        demo=demo,
        splits=["News"],
        undo_teachers=("DUET", "KLDistill"),
        trainer_config_dirs=dirs,
    )
    trains = by_run(rp.build_grid(options), "train")
    kl, duet = trains["muse_demo_News_KLDistill"], trains["muse_demo_News_DUET"]
    assert (arg(kl, "experiment"), arg(kl, "trainer")) == ("unlearn/muse/duet", "KLDistill")
    prefix = [a for a in duet.argv if a.startswith("trainer.method_args.prefix.")]
    assert len(prefix) == 3 and [a for a in kl.argv if a.startswith("trainer.method_args.prefix.")] == prefix
    assert (
        arg(kl, "trainer.args.num_train_epochs") == "10" and arg(kl, "data.forget.MUSE_forget.args.max_length") is None
    )
    for robustifier in ("UNDO", "Polish"):
        for teacher in ("DUET", "KLDistill"):
            step = trains[f"muse_demo_News_{robustifier}-{teacher}"]
            assert arg(step, "trainer.method_args.teacher") == arg(
                trains[f"muse_demo_News_{teacher}"], "paths.output_dir"
            )
            assert arg(step, "trainer.args.max_steps") == "500"
            assert arg(step, "data.forget.MUSE_forget.args.max_length") == str(rp.CPU_MUSE_MAX_LENGTH)
    polish = trains["muse_demo_News_Polish-DUET"]
    assert (arg(polish, "experiment"), arg(polish, "trainer")) == ("unlearn/muse/undo", "Polish")
    assert not any("Orphan" in run or "Shared" in run for run in trains)

    # The GPU profile: the same experiment and trainer, under OU's launch and batch.
    tofu = rp.build_grid(
        rp.GridOptions(
            benchmark="tofu",
            ou_root=ou_root,
            output_root=tmp_path / "gpu",
            splits=["forget05"],
            undo_teachers=("DUET",),
            trainer_config_dirs=dirs,
        )
    )
    kl = by_run(tofu, "train")["tofu_Llama-3.2-1B-Instruct_forget05_KLDistill"]
    assert (arg(kl, "experiment"), arg(kl, "trainer")) == ("unlearn/tofu/duet", "KLDistill")
    assert "accelerate" in kl.argv and arg(kl, "trainer.args.gradient_accumulation_steps") == "4"
    assert any("DUET, BiDistill, KLDistill, UNDO and Polish included" in n for n in tofu.notes)
