"""GLUE readers against the real files, metrics (scikit-learn / scipy) against their formulas, label order, bad input."""
import os
import subprocess
import sys

import numpy as np
import pytest

from kdcore.cli import UserError
from tinybert.glue import (
    TASKS, compute_metrics, get_task, label_order, load_split, matthews_corrcoef, pearson, read_examples, spearman,
    f1_binary,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("task,split,rows", [
    ("CoLA", "dev", 1043), ("SST-2", "dev", 872), ("MRPC", "dev", 1725), ("RTE", "dev", 277),
    ("STS-B", "dev", 1500), ("WNLI", "dev", 70), ("MRPC", "train", 4076),
])
def test_real_glue_files_read_completely(shared_data, task, split, rows):
    t = get_task(task)
    examples = load_split(os.path.join(shared_data, "glue", task), t, split)
    assert len(examples) == rows  # headers skipped, nothing dropped
    if t.labels is None:
        assert all(0.0 <= e.label <= 5.0 for e in examples)
    else:
        assert {e.label for e in examples} == set(t.labels)
    assert all(e.text_a for e in examples)
    assert (t.text_b is None) == all(e.text_b is None for e in examples)


def test_mrpc_bom_header_and_quotes(shared_data):
    t = get_task("mrpc")
    first = load_split(os.path.join(shared_data, "glue", "MRPC"), t, "train")[0]
    # the BOM'd header line is skipped, and quotes are kept literally (no csv quote processing)
    assert first.label == "1"
    assert first.text_a.startswith('Amrozi accused his brother, whom he called "the witness"')
    assert first.text_b.startswith("Referring to him")


def test_cola_has_no_header_and_sst2_has_one(shared_data):
    cola = load_split(os.path.join(shared_data, "glue", "CoLA"), get_task("cola"), "dev", max_examples=1)
    assert cola[0].text_a == "The sailors rode the breeze clear of the rocks."
    sst = load_split(os.path.join(shared_data, "glue", "SST-2"), get_task("SST-2"), "dev", max_examples=1)
    assert sst[0].text_a == "one long string of cliches ." and sst[0].label == "0"


def _write(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_mnli_qqp_qnli_layouts(tmp_path):
    mnli_header = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label"
    row = "0\t1\t1n\tgov\t(x)\t(y)\t(x)\t(y)\tA man sleeps.\tA person rests.\tentailment\tentailment"
    _write(tmp_path / "dev_matched.tsv", [mnli_header, row])
    _write(tmp_path / "dev_mismatched.tsv", [mnli_header, row.replace("entailment", "neutral")])
    m = load_split(str(tmp_path), TASKS["mnli"], "dev")[0]
    mm = load_split(str(tmp_path), TASKS["mnli-mm"], "dev")[0]
    assert (m.text_a, m.text_b, m.label, mm.label) == ("A man sleeps.", "A person rests.", "entailment", "neutral")
    _write(tmp_path / "qqp.tsv", ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate", "5\t1\t2\tHow?\tWhy?\t1"])
    q = read_examples(TASKS["qqp"], str(tmp_path / "qqp.tsv"), "train")[0]
    assert (q.text_a, q.text_b, q.label) == ("How?", "Why?", "1")
    _write(tmp_path / "qnli_test.tsv", ["index\tquestion\tsentence", "7\tWho?\tHim."])
    q = read_examples(TASKS["qnli"], str(tmp_path / "qnli_test.tsv"), "test")[0]
    assert (q.guid, q.text_a, q.text_b, q.label) == ("test-7", "Who?", "Him.", None)


def test_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "train.tsv"
    _write(path, ["sentence\tlabel", "good film\t1", "no label column"])
    with pytest.raises(UserError, match=r"train\.tsv:3: expected at least 2 tab-separated columns"):
        read_examples(get_task("SST-2"), str(path), "train")
    _write(path, ["sentence\tlabel", "good film\t1", "bad film\t2"])
    with pytest.raises(UserError, match=r"train\.tsv:3: label '2' is not one of SST-2's labels"):
        read_examples(get_task("SST-2"), str(path), "train")
    _write(path, ["h\th\th\th\th\th\th\th\th\th", "0\tg\tf\ty\t0\tn\tn\ta\tb\tfive"])
    with pytest.raises(UserError, match=r"train\.tsv:2: STS-B score 'five' is not a number"):
        read_examples(get_task("STS-B"), str(path), "train")
    with pytest.raises(UserError, match="unknown task 'sst-3'"):
        get_task("sst-3")


def _average_ranks(x):
    """1-based ranks, ties sharing their average rank (by hand, for the Spearman reference)."""
    x = np.asarray(x, dtype=float)
    return np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])


def test_metrics_match_their_formulas():
    rng = np.random.default_rng(0)
    for _ in range(5):
        y = rng.integers(0, 2, 200)
        p = np.where(rng.random(200) < 0.7, y, 1 - y)
        tp, tn = float(((p == 1) & (y == 1)).sum()), float(((p == 0) & (y == 0)).sum())
        fp, fn = float(((p == 1) & (y == 0)).sum()), float(((p == 0) & (y == 1)).sum())
        want_mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        assert matthews_corrcoef(p, y) == pytest.approx(want_mcc, abs=1e-12)
        assert f1_binary(p, y) == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-12)
        r = compute_metrics(get_task("MRPC"), p, y)
        assert r["acc"] == pytest.approx((tp + tn) / 200)
        assert r["acc_and_f1"] == pytest.approx((r["acc"] + r["f1"]) / 2)
        a = rng.integers(0, 6, 100).astype(float)  # many ties
        b = a + rng.normal(0, 1.5, 100)
        assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-10)
        assert spearman(a, b) == pytest.approx(np.corrcoef(_average_ranks(a), _average_ranks(b))[0, 1], abs=1e-10)
    # hand values: TP=2, TN=1, FP=1, FN=0 -> MCC = (2*1 - 1*0)/sqrt(3*2*2*1)
    assert matthews_corrcoef([1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(2 / np.sqrt(12))
    assert matthews_corrcoef([1, 1, 1], [0, 1, 0]) == 0.0  # a constant prediction: 0
    assert f1_binary([0, 0], [0, 0]) == 0.0  # no positive anywhere
    assert pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]) == 0.0 and spearman([2.0, 2.0], [1.0, 3.0]) == 0.0
    assert spearman([1.0, 2.0, 3.0], [10.0, 20.0, 15.0]) == pytest.approx(0.5)  # ranks 1,2,3 vs 1,3,2
    assert set(compute_metrics(get_task("cola"), [1], [1])) == {"mcc"}
    assert set(compute_metrics(get_task("sts-b"), [1.0, 2.0], [1.0, 3.0])) == {"pearson", "spearmanr", "corr"}


def test_label_order_follows_teacher_id2label():
    from transformers import BertConfig

    mnli = get_task("mnli")
    hf = BertConfig(id2label={0: "ENTAILMENT", 1: "neutral", 2: "contradiction"})
    assert label_order(mnli, hf) == ["entailment", "neutral", "contradiction"]
    assert label_order(mnli, BertConfig(num_labels=3)) == ["contradiction", "entailment", "neutral"]  # LABEL_i
    assert label_order(mnli, None) == ["contradiction", "entailment", "neutral"]
    with pytest.raises(UserError, match="not MNLI's labels"):
        label_order(mnli, BertConfig(id2label={0: "negative", 1: "positive", 2: "x"}))
    assert label_order(get_task("sts-b"), hf) is None


def test_cli_missing_train_exits_2(tmp_path, tiny_bert_dir):
    (tmp_path / "data").mkdir()
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "run_glue.py"), "--model_name_or_path", tiny_bert_dir,
         "--task_name", "SST-2", "--data_dir", str(tmp_path / "data"), "--do_train", "--output_dir", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    assert "run_glue.py: error: --data_dir" in proc.stderr and "no train.tsv for SST-2" in proc.stderr
    assert not os.path.exists(tmp_path / "o" / "model.safetensors")
