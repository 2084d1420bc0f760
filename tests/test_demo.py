"""The README's main command, in its smoke setting: every stage on real data with the packaged teacher."""
import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_smoke_runs_every_stage(installed_package, tmp_path, shared_data):
    """As a user who installed the wheel runs it: `kd-demo` in a folder outside the checkout, with its defaults for
    the output (runs/demo there), the student config (shipped in the package) and the teacher; the data found
    through KD_SHARED_DATA."""
    bindir, env, _, _ = installed_package
    out = tmp_path / "runs" / "demo"
    r = subprocess.run([os.path.join(bindir, "kd-demo"), "--scale", "smoke", "--ablation", "--augment", "2",
                        "--jobs", "2", "--general"], env={**env, "KD_SHARED_DATA": shared_data}, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.load(open(out / "results.json"))
    rows = {row["key"]: row for row in results["rows"]}
    assert list(rows) == ["teacher", "gold_random", "gold_pretrained_layers", "gold_finetuned_layers", "kd_soft",
                          "kd_hinton", "kd_stage1_hinton", "kd_aug_stage1_hinton", "embedding"]
    from transformers import AutoModel

    teacher = rows["teacher"]
    assert teacher["parameters"] == sum(p.numel() for p in AutoModel.from_pretrained(results["meta"]["teacher_path"]).parameters())
    students = [r for k, r in rows.items() if k != "teacher"]
    assert all(r["parameters"] == students[0]["parameters"] < teacher["parameters"] for r in students)
    for key, row in rows.items():
        if key == "embedding":
            continue
        for metric in ("sst2_dev_accuracy", "sst2_heldout_accuracy"):
            acc = row[metric]
            assert 0.0 <= acc["min"] <= acc["mean"] <= acc["max"] <= 1.0 and acc["n"] == 1
        assert row["sentences_per_s"] > 0
    for key in ("teacher", "gold_pretrained_layers", "embedding"):
        assert -100 <= rows[key]["stsb_spearman"]["mean"] <= 100
    assert (out / "results.md").read_text().count("|") > 20
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every model trained on the selection split only: 90 % of train.tsv; the held-out 10 % scored each run
    select = out / "sst2_select"
    assert results["meta"]["split"]["heldout_rows"] == 692
    assert len((select / "dev.tsv").read_text().splitlines()) == 693
    seed = out / "seed42"
    for key in ("gold_finetuned_layers", "kd_stage1", "kd_stage1_hinton", "kd_hinton"):
        card = json.load(open(seed / key / "training_args.json"))
        assert card["args"]["data_dir"] == str(select), key
    # the control and the distilled students start from the same folder: the fine-tuned teacher's layers 2, 4, 6
    start = str(out / "student_finetuned_teacher_layers")
    assert json.load(open(os.path.join(start, "config.json")))["student_init"]["layers"] == [2, 4, 6]
    assert json.load(open(seed / "gold_finetuned_layers" / "training_args.json"))["args"]["model_name_or_path"] == start
    stage1 = json.load(open(seed / "kd_stage1" / "training_args.json"))["args"]
    assert stage1["student_model"] == start and stage1["lr_schedule"] == "constant"
    hinton = json.load(open(seed / "kd_stage1_hinton" / "training_args.json"))["args"]
    assert hinton["alpha"] == results["meta"]["recipe"]["alpha"] and hinton["student_model"] == str(seed / "kd_stage1")
    assert os.listdir(out / "teacher_logits")
    # augmentation: a masked-LM head was fitted (held-out accuracy reported), train_aug.tsv written from the split
    assert "heldout_mlm_accuracy" in json.load(open(out / "teacher_mlm" / "eval_results.json"))
    assert len((select / "train_aug.tsv").read_text().splitlines()) > 64
    # the embedding student is a sentence-transformers folder whose weights moved away from the teacher-layer start
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(seed / "embedding_student"), device="cpu").encode(["a test"]).shape == (1, 384)
    trained = load_file(seed / "embedding_student" / "model.safetensors")
    start_weights = load_file(out / "student_teacher_layers" / "model.safetensors")
    assert trained.keys() == start_weights.keys()
    assert any(not torch.equal(trained[k], start_weights[k]) for k in trained)
    check_general_comparison(out, start_weights)


def check_general_comparison(out, start_weights):
    """`--general`: every method from the same start on the same corpus and token budget, scored a and b; the
    task-distillation pipeline (c) from the best method's student and from the start itself."""
    from transformers import AutoModel

    from pipelines.general_comparison import GENERAL_METHODS, RANDOM_START

    results = json.load(open(out / "general_results.json"))
    rows = {row["key"]: row for row in results["rows"]}
    methods = [key for key, *_ in GENERAL_METHODS]
    assert list(rows) == ["teacher", "start", "random", *methods, "task_only"]
    budget = results["meta"]["tokens_budget"]
    seed = out / "seed42"
    for key in methods:
        row = rows[key]
        # the same budget, counted in real tokens seen (line batches round to whole steps)
        assert abs(row["tokens"] - budget) <= 0.1 * budget, (key, row["tokens"])
        assert -100 <= row["stsb_spearman"]["mean"] <= 100
        assert 0 <= row["sst2_dev_after_finetuning"]["mean"] <= 1
        assert row["wall_seconds"] > 0
        card = json.load(open(seed / f"general_{key}" / "training_args.json"))["args"]
        assert card["student_init"] == ("random" if key in RANDOM_START else "teacher_layers"), key
        assert card["max_steps"] == row["steps"] and card["learning_rate"] == results["meta"]["learning_rate"]
        general = seed / f"general_{key}"
        model, info = AutoModel.from_pretrained(str(general), output_loading_info=True)
        assert not info["missing_keys"], (key, info["missing_keys"])
        if key not in RANDOM_START:  # trained away from the common start
            moved = load_file(general / "model.safetensors")
            assert any(not torch.equal(moved[k], start_weights[k]) for k in start_weights if k in moved), key
        finetune = json.load(open(seed / f"general_{key}_sst2" / "training_args.json"))["args"]
        assert finetune["model_name_or_path"] == str(general)
    # (c): the chosen method's student and the start go through the same two task-distillation stages
    best = results["meta"]["targets"]["pipeline_method"]
    assert "sst2_dev_after_task_distillation" in rows[best] and "sst2_dev_after_task_distillation" in rows["start"]
    stage1 = json.load(open(seed / f"general_{best}_kd_stage1" / "training_args.json"))["args"]
    assert stage1["student_model"] == str(seed / f"general_{best}")
    assert json.load(open(seed / "start_kd_stage1" / "training_args.json"))["args"]["student_model"] == str(
        out / "student_teacher_layers")
    assert (out / "general_results.md").read_text().count("\n|") == len(rows) + 2  # header, rule, rows
    for png in ("general_loss_curves.png", "general_scores.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rows_report_mean_and_spread_over_seeds():
    from pipelines.demo import mean_spread, results_markdown

    stat = mean_spread([0.80, 0.84, 0.82])
    assert stat["mean"] == pytest.approx(0.82) and stat["std"] == pytest.approx(0.02)  # sample std
    assert (stat["min"], stat["max"], stat["n"]) == (0.80, 0.84, 3)
    assert mean_spread([0.5])["std"] == 0.0
    rows = [{"model": "m", "parameters": 1e6, "sentences_per_s": 10.0, "speedup": 1.0, "sst2_dev_accuracy": stat}]
    meta = {"finished": "now", "device": "cpu", "scale": "default", "wall_seconds": 60, "seeds": [42, 43, 44],
            "teacher_name": "t"}
    md = results_markdown(rows, meta)
    assert "| - | 82.00 ± 2.00 (80.00-84.00) | - |" in md and "seeds 42, 43, 44" in md


def test_recipe_file_is_the_demo_default():
    """configs/recipes/sst2_demo.yaml parses with demo.py's arguments and holds exactly its defaults."""
    from pipelines.scripts import demo
    from kdcore.cli import parse_args

    recipe = os.path.join(REPO, "configs", "recipes", "sst2_demo.yaml")
    with_recipe = vars(parse_args(demo.build_parser(), ["--config", recipe]))
    defaults = vars(parse_args(demo.build_parser(), []))
    with_recipe.pop("config"), defaults.pop("config")
    assert with_recipe == defaults


def test_a_finished_stage_is_reused_only_with_the_arguments_it_was_made_with(tmp_path):
    from kdcore.cli import UserError
    from pipelines.demo import check_stage_record, write_stage_record

    folder = str(tmp_path)
    check_stage_record(folder, "s", ["--learning_rate", 1])  # no record (an older folder): reused as it is
    write_stage_record(folder, "s", "run_glue.py", ["--learning_rate", 1e-4, "--seed", 42])
    check_stage_record(folder, "s", ["--learning_rate", 0.0001, "--seed", 42])
    with pytest.raises(UserError, match=r"made with --learning_rate 0.0001, this run asks for 0.0002"):
        check_stage_record(folder, "s", ["--learning_rate", 2e-4, "--seed", 42])
    with pytest.raises(UserError, match=r"made with --fp16 \(absent\), this run asks for --fp16"):
        check_stage_record(folder, "s", ["--learning_rate", 1e-4, "--seed", 42, "--fp16"])
    # a path written another way, or another copy of the same file, is the same input; another file's bytes are not
    a, b, c = tmp_path / "a", tmp_path / "copy" / "a", tmp_path / "c"
    b.parent.mkdir()
    a.write_text("{}"), b.write_text("{}"), c.write_text("[]")
    write_stage_record(folder, "t", "run_glue.py", ["--config", str(a)])
    check_stage_record(folder, "t", ["--config", str(tmp_path / "copy" / ".." / "a")])
    check_stage_record(folder, "t", ["--config", str(b)])
    with pytest.raises(UserError, match=r"made with --config .*/a, this run asks for .*/c"):
        check_stage_record(folder, "t", ["--config", str(c)])
