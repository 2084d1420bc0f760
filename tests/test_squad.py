"""run_squad.py: reading, sliding windows, post-processing, and whole runs on the real SQuAD slices."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, make_tiny_model_dir
from kdcore.cli import UserError
from minilm.squad import (
    convert_examples_to_features,
    examples_from_squad,
    postprocess_predictions,
    read_squad_file,
    restrict_dataset,
)
from minilm.squad_metrics import evaluate_v1, evaluate_v2
from spm_tokenizer import build_spm_tokenizer_dir

from minilm.scripts import run_squad


@pytest.fixture(scope="module")
def squad_dir(shared_data):
    return os.path.join(shared_data, "squad")


@pytest.fixture(scope="module")
def spm_tokenizer(shared_data, tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_spm_tokenizer_dir(shared_data, str(tmp_path_factory.getbasetemp())))


@pytest.fixture(scope="module")
def tiny_qa_dir(tmp_path_factory, bert_tokenizer):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny_qa"), tokenizer=bert_tokenizer)


def _covering_span(tokenizer, context, start, end):
    """Text of the context tokens that cover [start, end), from a tokenisation of the whole context alone."""
    offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    covering = [(s, e) for s, e in offsets if e > start and s < end]
    return context[covering[0][0] : covering[-1][1]]


def _oracle_logits(examples, feats):
    """Logits that point at the first gold answer wherever a window holds it, and at CLS for unanswerable."""
    starts, ends = [], []
    for fi, ex_index in enumerate(feats.example_index):
        ex = examples[ex_index]
        n = len(feats.input_ids[fi])
        s, e = np.full(n, -10.0), np.full(n, -10.0)
        cls = feats.cls_index[fi]
        if ex.is_impossible:
            s[cls] = e[cls] = 10.0
        else:
            s[cls] = e[cls] = 0.0
            a_start = ex.answers[0]["answer_start"]
            a_end = a_start + len(ex.answers[0]["text"])
            toks = [t for t, o in enumerate(feats.offsets[fi]) if o is not None and o[1] > a_start and o[0] < a_end]
            if toks and feats.offsets[fi][toks[0]][0] <= a_start and feats.offsets[fi][toks[-1]][1] >= a_end:
                s[toks[0]] = e[toks[-1]] = 10.0
        starts.append(s)
        ends.append(e)
    return starts, ends


@pytest.mark.parametrize("which", ["bert", "sentencepiece"])
def test_windows_offsets_and_postprocessing_recover_gold_answers(which, squad_dir, bert_tokenizer, spm_tokenizer):
    """With logits pointing at the gold answer, every answer (and every "no answer") comes back exactly."""
    tokenizer = bert_tokenizer if which == "bert" else spm_tokenizer
    obj = read_squad_file(os.path.join(squad_dir, "dev-v2.0.json"), "--predict_file")
    examples = examples_from_squad(obj["data"], 120)
    # Short windows: most contexts need several, so the stride / max-context logic is exercised.
    feats = convert_examples_to_features(examples, tokenizer, max_seq_length=96, doc_stride=32,
                                         max_query_length=24, is_training=False,
                                         use_token_type_ids=which == "bert")
    assert len(feats) > 2 * len(examples)
    for ids, offsets in zip(feats.input_ids, feats.offsets):
        assert len(ids) <= 96
        assert sum(o is not None for o in offsets) <= 96 - 3
    # Every context token is the max-context token of exactly one window: the flagged tokens of all windows are
    # the context's tokens (as a multiset of offsets: SentencePiece's lone "▁" shares its offsets with the next
    # token).
    for ex_index in range(len(examples)):
        fis = [fi for fi, e in enumerate(feats.example_index) if e == ex_index]
        flagged = [feats.offsets[fi][t] for fi in fis for t, f in enumerate(feats.max_context[fi]) if f]
        whole = tokenizer(examples[ex_index].context, add_special_tokens=False, return_offsets_mapping=True)
        assert sorted(flagged) == sorted(map(tuple, whole["offset_mapping"]))
    starts, ends = _oracle_logits(examples, feats)
    preds = postprocess_predictions(examples, feats, starts, ends, n_best_size=5, max_answer_length=30,
                                    version_2_with_negative=True, null_score_diff_threshold=0.0)
    n_answerable = 0
    for ex in examples:
        if ex.is_impossible:
            assert preds.predictions[ex.qas_id] == ""
            assert preds.null_odds[ex.qas_id] > 0
        else:
            n_answerable += 1
            a = ex.answers[0]
            expected = _covering_span(tokenizer, ex.context, a["answer_start"], a["answer_start"] + len(a["text"]))
            assert preds.predictions[ex.qas_id] == expected
            assert preds.null_odds[ex.qas_id] < 0
        probs = [x["probability"] for x in preds.nbest[ex.qas_id]]
        assert sum(probs) == pytest.approx(1.0) and probs == sorted(probs, reverse=True)
    assert 20 < n_answerable < 100
    data = restrict_dataset(obj["data"], {ex.qas_id for ex in examples})
    metrics = evaluate_v2(data, preds.best_non_null, preds.null_odds, 0.0)
    assert metrics["NoAns_exact"] == 100.0
    if which == "bert":  # WordPiece splits at punctuation, so every answer here is token-aligned
        assert metrics["exact"] == 100.0


def test_training_labels_point_at_the_answer(squad_dir, bert_tokenizer):
    obj = read_squad_file(os.path.join(squad_dir, "train-v2.0.json"), "--train_file")
    examples = examples_from_squad(obj["data"], 80)
    kw = dict(max_seq_length=80, doc_stride=24, max_query_length=20, use_token_type_ids=True)
    train = convert_examples_to_features(examples, bert_tokenizer, is_training=True, **kw)
    ref = convert_examples_to_features(examples, bert_tokenizer, is_training=False, **kw)  # same windows + offsets
    assert train.skipped == 0 and train.input_ids == ref.input_ids
    inside = 0
    for fi in range(len(train)):
        ex = examples[train.example_index[fi]]
        s, e, cls = train.start_positions[fi], train.end_positions[fi], train.cls_index[fi]
        offsets = ref.offsets[fi]
        if ex.is_impossible:
            assert s == e == cls
            continue
        a_start = ex.answers[0]["answer_start"]
        a_end = a_start + len(ex.answers[0]["text"].strip())
        ctx = [o for o in offsets if o is not None]
        if ctx[0][0] <= a_start and ctx[-1][1] >= a_end:
            inside += 1
            assert offsets[s][0] <= a_start < offsets[s][1] and offsets[e][0] < a_end <= offsets[e][1]
        else:
            assert s == e == cls
    assert inside > 20


def test_answer_not_in_context_is_counted_and_skipped(squad_dir, bert_tokenizer, caplog):
    obj = read_squad_file(os.path.join(squad_dir, "train-v1.1.json"), "--train_file")
    examples = examples_from_squad(obj["data"], 5)
    examples[1].answers = [{"text": "not in the text at all", "answer_start": 3}]
    with caplog.at_level(logging.WARNING, logger="kd"):
        feats = convert_examples_to_features(examples, bert_tokenizer, 128, 64, 32, True, True)
    assert feats.skipped == 1
    assert sorted(set(feats.example_index)) == [0, 2, 3, 4]
    assert examples[1].qas_id in caplog.text


@pytest.mark.parametrize("content,message", [
    ("this is not json", "not a SQuAD JSON file"),
    ('{"version": "1.1", "rows": []}', "'data' list"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": [{"id": "a", "question": "q", '
     '"answers": [{"text": 3}]}]}]}]}', "answers"),
    ('{"data": [{"paragraphs": [{"context": "c", "qas": []}]}]}', "no questions"),
])
def test_bad_squad_files_are_user_errors(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        read_squad_file(str(path), "--predict_file")


def _run(argv):
    return run_squad.main([str(a) for a in argv])


def test_squad_v2_train_eval_all_checkpoints_and_reload(tmp_path, squad_dir, tiny_qa_dir):
    out = tmp_path / "v2"
    common = ["--model_type", "bert", "--data_dir", squad_dir, "--predict_file", "dev-v2.0.json",
              "--version_2_with_negative", "--do_lower_case", "--max_seq_length", 128, "--doc_stride", 64,
              "--max_eval_examples", 60, "--per_gpu_eval_batch_size", 16]
    report = _run(["--model_name_or_path", tiny_qa_dir, "--output_dir", out, "--do_train", "--do_eval",
                   "--train_file", "train-v2.0.json", "--max_train_examples", 48, "--per_gpu_train_batch_size", 8,
                   "--num_train_epochs", 2, "--learning_rate", 1e-3, "--save_steps", 10, "--logging_steps", 1,
                   "--eval_all_checkpoints", *common])
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved == json.loads(json.dumps(report))
    for key in ("exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1",
                "NoAns_total", "best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh",
                "best_non_null_exact", "best_non_null_exact_thresh", "best_non_null_f1", "best_non_null_f1_thresh"):
        assert key in saved, key
    assert saved["total"] == 60 and saved["HasAns_total"] + saved["NoAns_total"] == 60
    assert list(saved["results"]) == ["checkpoint-10", "checkpoint-20", "checkpoint-" + str(_last_step(out)), "final"]
    assert (out / "checkpoint-10" / "predictions.json").is_file()
    # model cards: every checkpoint has one; the final one carries the official figures as Hub metrics
    from kdcore.model_card import read_front_matter

    assert read_front_matter(out / "checkpoint-10")["datasets"] == ["squad_v2"]
    meta = read_front_matter(out)
    assert meta["base_model"] == str(tiny_qa_dir) and meta["pipeline_tag"] == "question-answering"
    values = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert values["exact"] == pytest.approx(saved["exact"]) and values["best_non_null_f1"] == pytest.approx(
        saved["best_non_null_f1"])
    assert "total" not in values and "best_f1_thresh" not in values
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]

    # The files agree with the metrics: re-score them with the official v2.0 procedure.
    preds = json.loads((out / "predictions.json").read_text())
    null_odds = json.loads((out / "null_odds.json").read_text())
    nbest = json.loads((out / "nbest_predictions.json").read_text())
    obj = read_squad_file(os.path.join(squad_dir, "dev-v2.0.json"), "--predict_file")
    data = restrict_dataset(obj["data"], set(preds))
    contexts = {qa["id"]: p["context"] for a in data for p in a["paragraphs"] for qa in p["qas"]}
    assert set(preds) == set(null_odds) == set(nbest) == set(contexts) and len(preds) == 60
    for qid, text in preds.items():
        assert text in contexts[qid]
        assert (text == "") == (null_odds[qid] > 0.0)
    # The official figures are evaluate-v2.0.py's on the files: predictions.json --na-prob-file null_odds.json.
    official = evaluate_v2(data, preds, na_probs=null_odds, na_prob_thresh=0.0)
    for key in ("exact", "f1", "HasAns_exact", "NoAns_f1", "best_exact", "best_exact_thresh", "best_f1",
                "best_f1_thresh"):
        assert official[key] == pytest.approx(saved[key]), key
    # The toolkit's search is the same search run on the best non-null answers of nbest_predictions.json.
    best_non_null = {q: next((x["text"] for x in nbest[q] if x["text"]), "") for q in preds}
    searched = evaluate_v2(data, best_non_null, na_probs=null_odds, na_prob_thresh=0.0)
    for key in ("best_exact", "best_exact_thresh", "best_f1", "best_f1_thresh"):
        assert searched[key] == pytest.approx(saved["best_non_null_" + key[len("best_"):]]), key

    # The saved final model reloads and gives the same answers.
    again = _run(["--model_name_or_path", out, "--output_dir", tmp_path / "reeval", "--do_eval", *common])
    assert again["exact"] == pytest.approx(saved["exact"]) and again["best_f1"] == pytest.approx(saved["best_f1"])
    assert json.loads((tmp_path / "reeval" / "predictions.json").read_text()) == preds


def _last_step(out):
    steps = [int(p.name.split("-")[1]) for p in out.iterdir() if p.name.startswith("checkpoint-")]
    return max(steps)


def test_squad_v1_seed_style_bare_weights_and_mlqa(tmp_path, squad_dir, tiny_qa_dir, packaged_teacher):
    """The seed command's form: a bare weights file + --config_name + --tokenizer_name vocab.txt."""
    out = tmp_path / "v1"
    report = _run(["--model_type", "bert", "--output_dir", out, "--data_dir", squad_dir,
                   "--model_name_or_path", os.path.join(tiny_qa_dir, "model.safetensors"),
                   "--tokenizer_name", os.path.join(packaged_teacher, "vocab.txt"),
                   "--config_name", os.path.join(tiny_qa_dir, "config.json"),
                   "--do_train", "--do_eval", "--do_lower_case", "--train_file", "train-v1.1.json",
                   "--predict_file", "dev-v1.1.json", "--learning_rate", 1e-3, "--num_train_epochs", 1,
                   "--max_seq_length", 128, "--doc_stride", 64, "--per_gpu_eval_batch_size=16",
                   "--per_gpu_train_batch_size=8", "--save_steps", 0, "--max_train_examples", 40,
                   "--max_eval_examples", 40])
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["total"] == 40 and 0.0 <= saved["exact_match"] <= saved["f1"] <= 100.0
    assert not (out / "null_odds.json").exists()
    preds = json.loads((out / "predictions.json").read_text())
    obj = read_squad_file(os.path.join(squad_dir, "dev-v1.1.json"), "--predict_file")
    data = restrict_dataset(obj["data"], set(preds))
    assert evaluate_v1(data, preds)["f1"] == pytest.approx(report["f1"])
    assert all(p for p in preds.values())  # SQuAD 1.1: always an answer

    mlqa = _run(["--model_type", "bert", "--model_name_or_path", out, "--output_dir", tmp_path / "mlqa",
                 "--data_dir", squad_dir, "--predict_file", "dev-v1.1.json", "--do_eval", "--max_seq_length", 128,
                 "--doc_stride", 64, "--max_eval_examples", 40, "--mlqa_language", "en"])
    assert mlqa["mlqa_language"] == "en"
    assert mlqa["f1"] == pytest.approx(evaluate_v1(data, preds, lang="en")["f1"])


def test_cli_bad_input_exits_2_with_one_line(tmp_path, tiny_qa_dir):
    bad = tmp_path / "train.json"
    bad.write_text("[1, 2, 3]")
    r = subprocess.run([sys.executable, os.path.join(REPO, "run_squad.py"), "--model_name_or_path", tiny_qa_dir,
                        "--output_dir", str(tmp_path / "o"), "--do_train", "--train_file", str(bad),
                        "--max_seq_length", "64", "--doc_stride", "32"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "run_squad.py: error: --train_file" in r.stderr and "not a SQuAD JSON file" in r.stderr
    assert not (tmp_path / "o" / "config.json").exists()
