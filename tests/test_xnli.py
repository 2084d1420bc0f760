"""run_xnli.py: reading the XNLI layout, per-language accuracy, joint-dev selection, the minilm path."""
import json
import os
import shutil

import numpy as np
import pytest

from conftest import make_tiny_model_dir
from kdcore.cli import UserError
from kdcore.finetune import load_task_tokenizer
from minilm.xnli import (LABELS, NliExamples, accuracy_by_language, read_eval_file, read_train_file,
                         select_checkpoint)
from spm_tokenizer import build_spm_tokenizer_dir

from minilm.scripts import run_xnli


@pytest.fixture(scope="module")
def spm_dir(shared_data, tmp_path_factory):
    return build_spm_tokenizer_dir(shared_data, str(tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def tiny_minilm_dir(tmp_path_factory, spm_dir):
    """A tiny random BERT whose vocabulary is the SentencePiece model's (the multilingual MiniLM layout)."""
    from transformers import AutoTokenizer

    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_minilm"), tokenizer=AutoTokenizer.from_pretrained(spm_dir))


def test_reads_the_shared_xnli_files(shared_data):
    train = read_train_file(os.path.join(shared_data, "xnli/XNLI-MT-1.0/multinli/multinli.train.de.tsv"), "de")
    dev = read_eval_file(os.path.join(shared_data, "xnli/XNLI-1.0/xnli.dev.tsv"))
    assert len(train) == 2245 and train.skipped == 0
    assert len(dev) == 250 and set(dev.languages) == {"de"}
    # counts from the README / the file itself: 98 contradiction, 82 entailment, 70 neutral
    assert [dev.labels.count(i) for i in range(3)] == [98, 82, 70]
    assert train.premises[0] == "und er hat gesagt, Mama ich bin daheim."
    assert LABELS[train.labels[0]] == "contradiction"


def test_accuracy_per_language_average_and_joint_by_hand():
    ex = NliExamples()
    for lang, label in [("de", 0), ("de", 1), ("de", 2), ("de", 0), ("fr", 1)]:
        ex.add("p", "h", label, lang)
    preds = np.array([0, 1, 2, 1, 0])  # de: 3 of 4 right, fr: 0 of 1
    acc = accuracy_by_language(preds, ex)
    assert acc["de"] == pytest.approx(75.0) and acc["fr"] == pytest.approx(0.0)
    assert acc["average"] == pytest.approx(37.5)  # mean over languages
    assert acc["joint"] == pytest.approx(60.0)  # 3 of 5 rows


def test_selection_uses_the_joint_dev_set_not_the_language_average():
    results = {
        "checkpoint-10": {"de": 80.0, "sw": 40.0, "average": 60.0, "joint": 70.0},  # de has 3x the rows of sw
        "checkpoint-20": {"de": 60.0, "sw": 70.0, "average": 65.0, "joint": 62.5},
        "final": {"de": 80.0, "sw": 40.0, "average": 60.0, "joint": 70.0},
    }
    assert select_checkpoint(results) == "checkpoint-10"  # best joint; the earlier of two equal ones


def test_bad_xnli_files(tmp_path):
    wrong_header = tmp_path / "a.tsv"
    wrong_header.write_text("sentence1\tsentence2\tgold\nx\ty\tneutral\n")
    with pytest.raises(UserError, match=r"a.tsv:1: expected the header 'premise hypo label'"):
        read_train_file(str(wrong_header), "de")
    bad_label = tmp_path / "b.tsv"
    bad_label.write_text("premise\thypo\tlabel\nx\ty\tneutral\nx\ty\tmaybe\n")
    with pytest.raises(UserError, match=r"b.tsv:3: unknown label 'maybe'"):
        read_train_file(str(bad_label), "de")
    short_rows = tmp_path / "c.tsv"
    short_rows.write_text("premise\thypo\tlabel\nx\ty\tcontradictory\nonly one field\nx\ty\tneutral\textra\n")
    with pytest.raises(UserError, match=r"c.tsv:3: expected 3 tab-separated fields, found 1 \(and 1 more rows\)"):
        read_train_file(str(short_rows), "de")
    header_only = tmp_path / "d.tsv"
    header_only.write_text("premise\thypo\tlabel\n")
    with pytest.raises(UserError, match="no usable rows"):
        read_train_file(str(header_only), "de")
    no_columns = tmp_path / "e.tsv"
    no_columns.write_text("lang\tlabel\ts1\ts2\nde\tneutral\tx\ty\n")
    with pytest.raises(UserError, match="header lacks the column"):
        read_eval_file(str(no_columns))


def test_minilm_model_type_wants_the_sentencepiece_tokenizer(spm_dir, packaged_teacher, tmp_path):
    args = run_xnli.build_parser().parse_args(
        ["--model_type", "minilm", "--model_name_or_path", packaged_teacher, "--output_dir", str(tmp_path),
         "--data_dir", str(tmp_path), "--language", "de"])
    with pytest.raises(UserError, match="SentencePiece"):
        load_task_tokenizer(args)  # the packaged teacher's tokenizer is WordPiece
    args.tokenizer_name = os.path.join(spm_dir, "sentencepiece.bpe.model")  # a bare .model file works
    tok = load_task_tokenizer(args)
    assert "XLMRoberta" in type(tok).__name__ and len(tok) == 1002
    enc = tok("Er sagte kein Wort.", "Mama ich bin daheim.")
    assert "token_type_ids" not in enc
    assert enc["input_ids"][0] == tok.cls_token_id and enc["input_ids"].count(tok.sep_token_id) == 3
    args.tokenizer_name = "xlm-roberta-base"  # a hub name: offline, so a clear error
    with pytest.raises(UserError, match="offline"):
        load_task_tokenizer(args)


def _two_language_data_dir(shared_data, tmp_path, with_test):
    """The real German files, plus an 'en' copy of the first 60 dev rows so two languages of unequal size exist."""
    root = tmp_path / "xnli"
    (root / "XNLI-1.0").mkdir(parents=True)
    (root / "XNLI-MT-1.0" / "multinli").mkdir(parents=True)
    shutil.copy(os.path.join(shared_data, "xnli/XNLI-MT-1.0/multinli/multinli.train.de.tsv"),
                root / "XNLI-MT-1.0" / "multinli")
    lines = open(os.path.join(shared_data, "xnli/XNLI-1.0/xnli.dev.tsv"), encoding="utf-8").read().splitlines()
    en = ["en" + line[2:] for line in lines[1:61]]
    (root / "XNLI-1.0" / "xnli.dev.tsv").write_text("\n".join(lines + en) + "\n", encoding="utf-8")
    if with_test:  # a test file = the dev file, so test accuracy must equal the selected checkpoint's dev accuracy
        shutil.copy(root / "XNLI-1.0" / "xnli.dev.tsv", root / "XNLI-1.0" / "xnli.test.tsv")
    return root


def test_run_xnli_seed_command_selects_on_joint_dev(shared_data, tiny_minilm_dir, spm_dir, tmp_path):
    data_dir = _two_language_data_dir(shared_data, tmp_path, with_test=True)
    out = tmp_path / "out"
    report = run_xnli.main([
        "--model_type", "minilm", "--output_dir", str(out), "--data_dir", str(data_dir),
        "--model_name_or_path", os.path.join(tiny_minilm_dir, "model.safetensors"),
        "--tokenizer_name", os.path.join(spm_dir, "sentencepiece.bpe.model"),
        "--config_name", os.path.join(tiny_minilm_dir, "config.json"), "--do_train", "--do_eval",
        "--max_seq_length", "128", "--per_gpu_train_batch_size", "32", "--learning_rate", "3e-4",
        "--num_train_epochs", "1", "--per_gpu_eval_batch_size", "64", "--weight_decay", "0.001",
        "--warmup_steps", "3", "--save_steps", "8", "--logging_steps", "4", "--eval_all_checkpoints",
        "--language", "de", "--max_train_examples", "800",
    ])
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["languages"] == ["de", "en"] and saved["train_language"] == "de"
    assert list(saved["checkpoints_dev"]) == ["checkpoint-8", "checkpoint-16", "checkpoint-24", "checkpoint-25", "final"]
    joint = {name: r["joint"] for name, r in saved["checkpoints_dev"].items()}
    assert len(set(joint.values())) > 1  # the checkpoints differ, so the choice (and test of it) means something
    assert saved["selected"] == max(joint, key=joint.get)  # first best on the joint dev set
    dev = saved["dev"]
    assert dev["average"] == pytest.approx((dev["de"] + dev["en"]) / 2)
    assert dev["joint"] == pytest.approx((250 * dev["de"] + 60 * dev["en"]) / 310)
    assert saved["reported_split"] == "test" and saved["test"] == pytest.approx(dev) and saved["accuracy"] == saved["test"]
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [4, 8, 12, 16, 20, 24, 25]
    # The model written is a BERT sequence classifier with the SentencePiece vocabulary, and reloads.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.model_type == "bert" and model.config.num_labels == 3
    assert len(AutoTokenizer.from_pretrained(out)) == 1002


def test_run_xnli_without_test_file_reports_dev_clearly(shared_data, tiny_minilm_dir, spm_dir, tmp_path):
    out = tmp_path / "eval_only"
    report = run_xnli.main([
        "--model_type", "minilm", "--output_dir", str(out), "--data_dir", os.path.join(shared_data, "xnli"),
        "--model_name_or_path", tiny_minilm_dir, "--tokenizer_name", spm_dir, "--do_eval", "--language", "de",
        "--max_eval_examples", "100",
    ])
    assert report["test"] is None and report["reported_split"] == "dev"
    assert "test not evaluated" in report["note"]
    assert report["num_dev_examples"] == 100 and set(report["accuracy"]) == {"de", "average", "joint"}
    assert 0.0 <= report["accuracy"]["de"] <= 100.0
