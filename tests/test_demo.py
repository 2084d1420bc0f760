"""The README's main command, in its smoke setting: every stage on real data with the packaged teacher."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_smoke_runs_every_stage(tmp_path, shared_data):
    out = tmp_path / "demo"
    env = dict(os.environ)
    r = subprocess.run([sys.executable, os.path.join(REPO, "demo.py"), "--scale", "smoke", "--output_dir", str(out),
                        "--data_dir", shared_data], env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.load(open(out / "results.json"))
    rows = {row["model"]: row for row in results["rows"]}
    assert len(rows) == 5
    teacher, distilled, from_teacher, random_init, embedding = results["rows"]
    from transformers import AutoModel

    assert teacher["parameters"] == sum(p.numel() for p in AutoModel.from_pretrained(results["meta"]["teacher_path"]).parameters())
    assert distilled["parameters"] < teacher["parameters"]
    assert distilled["parameters"] == from_teacher["parameters"] == random_init["parameters"]
    for row in (teacher, distilled, from_teacher, random_init):
        acc = row["sst2_dev_accuracy"]
        assert 0.0 <= acc["min"] <= acc["mean"] <= acc["max"] <= 1.0 and acc["n"] == 1
        assert row["sentences_per_s"] > 0
    for row in (teacher, from_teacher, embedding):
        assert -100 <= row["stsb_spearman"]["mean"] <= 100
    assert (out / "results.md").read_text().count("|") > 20
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the distilled student started from the fine-tuned teacher's layers and learnt from its cached logits
    seed = out / "seed42"
    cfg = json.load(open(seed / "sst2_student_distilled" / "config.json"))
    assert cfg["student_init"]["layers"] == [2, 4, 6]
    assert os.listdir(out / "teacher_logits")
    # the embedding student is a sentence-transformers folder whose weights moved away from the teacher-layer start
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(seed / "embedding_student"), device="cpu").encode(["a test"]).shape == (1, 384)
    trained = load_file(seed / "embedding_student" / "model.safetensors")
    start = load_file(out / "student_teacher_layers" / "model.safetensors")
    assert trained.keys() == start.keys()
    assert any(not torch.equal(trained[k], start[k]) for k in trained)


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
    assert "| 82.00 ± 2.00 (80.00-84.00) | - |" in md and "seeds 42, 43, 44" in md
