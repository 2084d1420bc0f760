"""export_onnx.py on tiny random models: the fp32 graph computes what PyTorch computes (on batch sizes and lengths
it was not traced with), the int8 file runs and is smaller, the scores are those of the toolkit's own evaluators,
the gate trips on a model that int8 damages, the model card gets the numbers, and bench/bench_export.py tables them.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from forked import run_forked

pytest.importorskip("onnxruntime")
SCRIPT = os.path.join(REPO, "export_onnx.py")
SENTENCES = ["A man is playing a guitar.", "Two dogs run", "The quick brown fox jumps over the lazy dog near the river."]


def _embedding_folder(path, bert_tokenizer, packaged_teacher):
    """A tiny random BERT (2 x 32) with the teacher's vocabulary, as a sentence-transformers folder (mean pooling,
    normalised, as the teacher's)."""
    from conftest import make_tiny_model_dir
    from kdcore.sentence_embeddings import write_sentence_transformers_files

    make_tiny_model_dir(path, tokenizer=bert_tokenizer)
    write_sentence_transformers_files(packaged_teacher, str(path), 32)
    return str(path)


def _classifier_folder(path, bert_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2, id2label={0: "0", 1: "1"}, label2id={"0": 0, "1": 1})
    BertForSequenceClassification(config).save_pretrained(path)
    bert_tokenizer.save_pretrained(path)
    return str(path)


def _run(argv):
    """export_onnx.py's main in this process (parse_args, run record and all)."""
    from pipelines.scripts.export_onnx import main

    return main(argv)


def _ort(path):
    import onnxruntime as ort

    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def embedding_export(tmp_path_factory, bert_tokenizer, packaged_teacher, shared_data):
    model = _embedding_folder(tmp_path_factory.mktemp("emb") / "model", bert_tokenizer, packaged_teacher)
    with open(os.path.join(model, "README.md"), "w", encoding="utf-8") as f:
        f.write("# my model\n\nA card the user wrote.\n")
    sts = os.path.join(shared_data, "glue", "STS-B", "dev.tsv")
    result = _run(["--model_dir", model, "--dev_file", sts, "--max_examples", "60"])
    return model, sts, result


def test_embedding_export_equals_pytorch_and_int8_runs_smaller(embedding_export, bert_tokenizer):
    from kdcore.sentence_embeddings import encode, folder_sts_spearman, read_sts
    from transformers import AutoModel

    model_dir, sts, result = embedding_export
    out = os.path.join(model_dir, "onnx")  # the default output folder
    fp32, int8 = os.path.join(out, "model.onnx"), os.path.join(out, "model_qint8.onnx")
    assert os.path.getsize(int8) < 0.5 * os.path.getsize(fp32)
    # 3 sentences of different lengths (traced with 2): the toolkit's own encoder (mean pooling, normalised)
    model = AutoModel.from_pretrained(model_dir).eval()
    expected = encode(model, bert_tokenizer, SENTENCES, "mean", True)
    enc = bert_tokenizer(SENTENCES, padding=True, return_tensors="np")
    feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    emb, hidden = _ort(fp32).run(["sentence_embedding", "last_hidden_state"], feed)
    assert emb.shape == (3, 32) and hidden.shape == (3, feed["input_ids"].shape[1], 32)
    assert np.abs(emb - expected).max() <= 1e-4
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    q = _ort(int8).run(["sentence_embedding"], feed)[0]
    assert q.shape == (3, 32) and np.isfinite(q).all() and 0 < np.abs(q - expected).max() < 0.5
    # the PyTorch score is eval_sts.py's score of the folder on the same pairs
    reference = folder_sts_spearman(model_dir, read_sts(sts), max_examples=60)["spearman"]
    assert result["scores"]["pytorch_fp32"] == pytest.approx(reference, abs=0.05)
    assert result["scores"]["onnx_fp32"] == pytest.approx(result["scores"]["pytorch_fp32"], abs=0.05)
    assert result["int8_drop"] == pytest.approx(result["scores"]["pytorch_fp32"] - result["scores"]["onnx_int8"])
    with open(os.path.join(out, "export_results.json"), encoding="utf-8") as f:
        assert json.load(f)["scores"] == result["scores"]


def test_model_card_gets_the_section_once_and_keeps_the_rest(embedding_export, shared_data):
    from kdcore.model_card import write_model_card

    model_dir, sts, result = embedding_export
    card = os.path.join(model_dir, "README.md")
    text = open(card, encoding="utf-8").read()
    assert text.startswith("# my model\n\nA card the user wrote.\n") and "## ONNX export" in text
    s = result["scores"]
    assert f"| score | {s['pytorch_fp32']:.2f} | {s['onnx_fp32']:.2f} | {s['onnx_int8']:.2f} |" in text
    assert "`onnx/model_qint8.onnx`" in text and "mean pooling, L2-normalised" in text
    # the same weights again (another gate): allowed, and the section is replaced, not added
    again = _run(["--model_dir", model_dir, "--dev_file", sts, "--max_examples", "30", "--max_drop", "100"])
    text = open(card, encoding="utf-8").read()
    assert text.count("## ONNX export") == 1 and "(30 examples)" in text and "A card the user wrote." in text
    assert again["examples"] == 30
    # the toolkit's card writer rewrites the card and keeps the section
    write_model_card(model_dir)
    text = open(card, encoding="utf-8").read()
    assert text.count("## ONNX export") == 1 and "(30 examples)" in text and "Architecture: bert" in text


def test_classifier_export_logits_and_accuracy(tmp_path, bert_tokenizer, shared_data):
    from tinybert.glue import get_task, read_examples
    from transformers import AutoModelForSequenceClassification

    model_dir = _classifier_folder(tmp_path / "clf", bert_tokenizer)
    out = str(tmp_path / "export")
    dev = os.path.join(shared_data, "glue", "SST-2", "dev.tsv")
    result = _run(["--model_dir", model_dir, "--output_dir", out, "--dev_file", dev, "--max_examples", "50"])
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = bert_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**enc).logits.numpy()
    logits = _ort(os.path.join(out, "model.onnx")).run(["logits"], {k: v.numpy() for k, v in enc.items()})[0]
    assert np.abs(logits - expected).max() <= 1e-4
    assert _ort(os.path.join(out, "model_qint8.onnx")).run(["logits"], {k: v.numpy() for k, v in enc.items()})[0].shape == (3, 2)
    # accuracy of PyTorch fp32, computed here one sentence at a time
    examples = read_examples(get_task("sst-2"), dev, "dev", 50)
    with torch.no_grad():
        preds = [int(model(**bert_tokenizer(e.text_a, return_tensors="pt")).logits.argmax()) for e in examples]
    assert result["scores"]["pytorch_fp32"] == pytest.approx(100 * np.mean([p == int(e.label) for p, e in zip(preds, examples)]))
    # the export is outside the model folder: its own card, the model's folder untouched
    assert "## ONNX export" in open(os.path.join(out, "README.md"), encoding="utf-8").read()
    assert not os.path.exists(os.path.join(model_dir, "README.md"))
    assert {"tokenizer.json", "export_results.json"} <= set(os.listdir(out))


def _one_teacher_layer(path, packaged_teacher, outlier):
    """The real teacher cut to its first layer (a real embedding model, 1 x 384: STS-B 38 on the first 40 dev pairs,
    where a random tiny model scores about 0), with one value of its word-embedding table set to `outlier`."""
    from kdcore.sentence_embeddings import write_sentence_transformers_files
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(packaged_teacher)
    model.encoder.layer = model.encoder.layer[:1]
    model.config.num_hidden_layers = 1
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[1, 0] = outlier  # token 1 is [unused0]: no dev sentence has it
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(packaged_teacher).save_pretrained(path)
    write_sentence_transformers_files(packaged_teacher, str(path), 384)
    return str(path)


def test_gate_trips_when_int8_damages_the_model(tmp_path, packaged_teacher, shared_data):
    """One large value in the word-embedding table: a known int8 failure (per-tensor quantization of that table
    rounds every other value to zero). fp32 is unaffected; int8 loses the words, and the gate says so."""
    model_dir = _one_teacher_layer(tmp_path / "outlier", packaged_teacher, outlier=1e3)
    out = str(tmp_path / "export")
    sts = os.path.join(shared_data, "glue", "STS-B", "dev.tsv")
    argv = ["--model_dir", model_dir, "--output_dir", out, "--dev_file", sts, "--max_examples", "40"]
    code, _, stderr = run_forked(SCRIPT, argv)  # `python export_onnx.py ...`, forked from this warm process
    lines = [line for line in stderr.splitlines() if line.startswith("export_onnx.py: error: ")]
    assert code == 2 and len(lines) == 1 and lines[0] == stderr.strip().splitlines()[-1], stderr[-2000:]
    assert "int8 loses" in lines[0] and "--max_drop 0.5" in lines[0] and "--float_embeddings" in lines[0]
    assert "Traceback" not in stderr and not os.path.exists(out)
    fp32, int8 = (float(v) for v in re.search(r"\(([-\d.]+) -> ([-\d.]+)\)", lines[0]).groups())
    assert fp32 > 30 and fp32 - int8 > 10, lines[0]
    # keeping the embedding tables float passes the same gate, with the same fp32 score
    result = _run([*argv, "--float_embeddings"])
    assert result["scores"]["pytorch_fp32"] == pytest.approx(fp32, abs=0.01)
    assert result["int8_drop"] <= 0.5 and "Gather" not in result["quantization"]["op_types"]
    from kdcore.onnx_export import cpu_has_vnni  # 7-bit weights exactly where AVX2's pair sums could saturate

    assert result["quantization"]["reduce_range"] is (not cpu_has_vnni())


def test_bench_export_tables_the_runtimes(embedding_export, tmp_path, bert_tokenizer, packaged_teacher):
    teacher = _embedding_folder(tmp_path / "teacher", bert_tokenizer, packaged_teacher)
    model_dir = embedding_export[0]
    out = str(tmp_path / "speed.json")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_export.py"), "--teacher", teacher,
                           "--student", model_dir, "--onnx_dir", os.path.join(model_dir, "onnx"), "--batch_sizes", "1",
                           "2", "--threads", "1", "--seq_len", "16", "--repeat", "1", "--out", out],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.load(open(out))
    rows = {r["model"]: r for r in data["rows"]}
    assert list(rows) == ["teacher PyTorch fp32", "student PyTorch fp32", "student ONNX fp32", "student ONNX int8"]
    for r in rows.values():
        assert set(r["sentences_per_s"]) == {"batch 1, 1 thread", "batch 2, 1 thread"}
        assert all(v > 0 for v in r["sentences_per_s"].values()) and r["bytes"] > 0
    assert rows["student ONNX int8"]["bytes"] == os.path.getsize(os.path.join(model_dir, "onnx", "model_qint8.onnx"))
    assert os.path.getsize(out[:-5] + ".png") > 1000 and "| teacher PyTorch fp32 |" in open(out[:-5] + ".md").read()


def test_fp32_mismatch_beyond_the_tolerance_fails_and_writes_nothing(tmp_path, bert_tokenizer, packaged_teacher,
                                                                     shared_data):
    """ONNX Runtime's fp32 kernels differ from PyTorch's in the last bits (about 1e-7 here): a tolerance below that
    makes the gate fail, naming the difference."""
    model_dir = _embedding_folder(tmp_path / "model", bert_tokenizer, packaged_teacher)
    out = str(tmp_path / "export")
    argv = ["--model_dir", model_dir, "--output_dir", out, "--max_examples", "8", "--fp32_tolerance", "1e-12",
            "--dev_file", os.path.join(shared_data, "glue", "STS-B", "dev.tsv")]
    code, _, stderr = run_forked(SCRIPT, argv)
    assert code == 2 and stderr.strip().splitlines()[-1].startswith("export_onnx.py: error: ONNX fp32 differs from "
                                                                    "PyTorch by "), stderr[-2000:]
    diff = float(re.search(r"differs from PyTorch by ([\d.e+-]+) ", stderr).group(1))
    assert 1e-12 < diff < 1e-4 and "--fp32_tolerance 1e-12" in stderr and not os.path.exists(out)


def test_an_exported_graph_is_a_scorecard_row_equal_to_its_source(embedding_export, shared_data, tmp_path):
    """eval_embeddings.py scores an export's `model.onnx` (the pooling from its export_results.json) as it scores the
    PyTorch folder it came from; a classifier's export or a missing file is one clear error."""
    from kdcore.errors import UserError
    from kdcore.onnx_export import load_onnx_encoder
    from pipelines.scripts.eval_embeddings import main as eval_embeddings

    model = embedding_export[0]
    graph = os.path.join(model, "onnx", "model.onnx")
    card = eval_embeddings(["--model_dir", model, graph, "--names", "torch", "onnx", "--output_dir",
                            str(tmp_path / "card"), "--data_dir", shared_data, "--max_examples", "30",
                            "--paragraph_max_seq_length", "128"])
    torch_row, onnx_row = card["models"]
    assert onnx_row["kind"] == "onnx" and onnx_row["parameters"] is None
    assert (onnx_row["pooling"], onnx_row["normalize"]) == (torch_row["pooling"], torch_row["normalize"])
    for key in ("sts_b_spearman", "mrpc_ap", "squad_ndcg@10", "squad_mrr@10"):
        assert onnx_row["scores"][key] == pytest.approx(torch_row["scores"][key], abs=1e-3), key
    assert "| `onnx` | onnx | - |" in open(tmp_path / "card" / "scorecard.md", encoding="utf-8").read()
    with pytest.raises(UserError, match="no such file"):
        load_onnx_encoder(str(tmp_path / "missing.onnx"))
