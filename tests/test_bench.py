"""bench/: every benchmark runs through bench/run_all.py --smoke (tiny settings) and writes its JSON.

No timing assertions: only the fields, the configurations covered, and the facts that do not depend on speed.
"""
import json
import math
import os
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("bench_results")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run_all.py"), "--smoke", "--results_dir",
                        str(out), "--data_dir", shared_data], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, r.stdout


def load(out, name):
    data = json.load(open(out / f"{name}.json"))
    assert data["benchmark"] and data["rows"] and "machine" in data
    return data


def test_run_all_prints_every_table(smoke_results):
    out, stdout = smoke_results
    names = ["inference", "distill", "relation_loss", "corpus", "pregenerate", "augment"]
    if os.path.isfile(os.path.join(REPO, "bench", "bench_decode.py")):
        names.append("decode")
    for name in names:
        assert load(out, name)["benchmark"] in stdout
    if "decode" in names:  # cached and recomputing beam search must agree
        assert all(r["identical_outputs"] for r in load(out, "decode")["rows"])
    summary = (out / "SUMMARY.md").read_text()
    assert summary.count("\n| ") > 15 and all(f"{n} " in summary.splitlines()[-1] for n in names)


def test_distill_json(smoke_results):
    data = load(smoke_results[0], "distill")
    configs = {(r["method"], r["precision"]) for r in data["rows"]}
    from pipelines.methods import METHODS  # every row of the method table is benchmarked

    assert configs == {(m, p) for m in METHODS for p in ("fp32", "bf16")} and len(METHODS) >= 3
    for r in data["rows"]:
        assert r["tokens_per_s"] > 0 and math.isfinite(r["loss"])
        assert r["tokens_per_s"] == pytest.approx(data["batch_size"] * data["seq_len"] / r["step_s"])
        assert r["achieved_GFLOP_s"] == pytest.approx(r["model_GFLOP_per_step"] / r["step_s"])
        # each timed step is paired with the matmul rate measured just before it; MFU is the median ratio
        assert len(r["rounds"]) == data["repeat"]
        ratios = [100 * r["model_GFLOP_per_step"] / x["step_s"] / x["matmul_GFLOP_s"] for x in r["rounds"]]
        assert r["pct_of_matmul"] == pytest.approx(statistics.median(ratios)) and r["pct_of_matmul"] > 0


def test_distill_flop_formula_by_hand():
    """step_flops against the docstring formula with the parameter counts written out for the smoke shapes."""
    import torch
    from bench_distill import SIZES, bert, build_objective, step_flops

    torch.manual_seed(0)
    sizes = SIZES["smoke"]
    teacher = bert(*sizes["teacher"], 16)
    n, t = 2 * 16, 16
    p_t = 2 * (4 * 96 * 96 + 2 * 96 * 192)  # 2 layers: Q, K, V, attention output (h x h); FFN in + out (h x 4h/2)
    p_s = 1 * (4 * 48 * 48 + 2 * 48 * 96)
    teacher_f = n * (2 * p_t + 4 * 2 * t * 96)
    student_f = 3 * n * (2 * p_s + 4 * 1 * t * 48)
    # MiniLMv2 stops both forwards at the last layer's Q/K/V: that layer counts 3 h x h weights, no attention
    v2_teacher = n * (2 * (p_t // 2 + 3 * 96 * 96) + 4 * 1 * t * 96)
    v2_student = 3 * n * (2 * (3 * 48 * 48))
    assert step_flops(build_objective("minilmv2", teacher, sizes, 16), n, t) == v2_teacher + v2_student
    fit = 3 * n * 2 * (48 * 96) * 2  # fit_dense 48 -> 96 on the embeddings and 1 layer output
    assert step_flops(build_objective("tinybert", teacher, sizes, 16), n, t) == teacher_f + student_f + fit


def test_relation_loss_json(smoke_results):
    data = load(smoke_results[0], "relation_loss")
    assert [(r["relation_heads"], r["impl"]) for r in data["rows"]] == [
        (48, "reference"), (48, "chunked 2^24"), (48, "chunked 2^20")]  # the default --chunk_elements
    ref, *chunked = data["rows"]
    assert ref["time_vs_reference"] == 1 and ref["peak_MB"] >= 0
    for new in chunked:
        assert new["time_vs_reference"] == pytest.approx(new["fwd_bwd_s"] / ref["fwd_bwd_s"])
        assert new["value_rel_diff"] < 1e-5 and new["grad_rel_diff"] < 1e-5  # the same loss and gradient
        assert new["peak_MB"] >= 0


def test_corpus_json(smoke_results):
    data = load(smoke_results[0], "corpus")
    rows = {(r["corpus"], r["format"]): r for r in data["rows"]}
    assert set(rows) == {(c, f) for c in ("1x", "4x") for f in ("json", "shards", "packed")}
    for c in ("1x", "4x"):  # the same instances in both epoch formats; binary ones are smaller on disk
        assert rows[c, "json"]["instances"] == rows[c, "shards"]["instances"] > 0
        assert rows[c, "shards"]["disk_bytes_per_instance"] < rows[c, "json"]["disk_bytes_per_instance"] / 2
    assert rows["4x", "shards"]["instances"] > 3 * rows["1x", "shards"]["instances"]
    # run_all ran distill first: the loader is compared with the step's consumption
    assert data["step_instances_per_s"] > 0 and all(r["loader_vs_step"] > 0 for r in data["rows"])
    assert all(r["pregen_rss_vs_1x"] == pytest.approx(r["pregen_peak_rss_MB"] / rows["1x", r["format"]]["pregen_peak_rss_MB"])
               for r in data["rows"])


def test_pregenerate_json(smoke_results):
    data = load(smoke_results[0], "pregenerate")
    rows = {(r["corpus"], r["reduce_memory"]): r for r in data["rows"]}
    assert set(rows) == {(c, m) for c in ("1x", "2x") for m in (False, True)}
    for c in ("1x", "2x"):  # the on-disk store writes exactly the same instances
        assert rows[c, True]["instances"] == rows[c, False]["instances"] > 0
    assert rows["2x", False]["instances"] > rows["1x", False]["instances"]
    assert rows["2x", False]["corpus_MB"] == pytest.approx(2 * rows["1x", False]["corpus_MB"], rel=0.01)
    for r in data["rows"]:
        assert r["peak_rss_MB"] >= data["startup"]["maxrss_MB"] * 0.5 > 0 and r["instances_per_s"] > 0


def test_augment_json(smoke_results):
    data = load(smoke_results[0], "augment")
    assert data["identical_outputs"] is True and data["random_weights"] is True and data["masked_lm_queries"] > 0
    batched, reference = data["rows"]
    assert (batched["implementation"], reference["implementation"]) == ("batched", "one forward per word")
    assert batched["rows_in"] == reference["rows_in"] == data["input_rows"]
    assert batched["rows_out"] == reference["rows_out"] > batched["rows_in"]


def test_inference_json(smoke_results):
    data = load(smoke_results[0], "inference")
    assert [r["model"] for r in data["rows"]][0] == "BERT-base 12x768" and data["rows"][0]["speedup_vs_bert_base"] == 1


def test_run_all_reports_a_failing_benchmark(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run_all.py"), "--smoke", "--only", "pregenerate",
                        "--results_dir", str(tmp_path), "--data_dir", str(tmp_path / "missing")],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "pregenerate FAILED" in r.stdout and "corpus not found" in r.stdout
    assert not (tmp_path / "pregenerate.json").exists()


def test_rusage_wrapper_keeps_the_exit_code(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import sys\nblock = bytearray(64 * 1024 * 1024)\nsys.exit(3)\n")
    result = tmp_path / "r.json"
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "run_with_rusage.py"), str(result), str(script)])
    data = json.load(open(result))
    assert r.returncode == 3 and data["exit_code"] == 3 and data["maxrss_self_MB"] >= 64


def test_gpu_check_dry_run_walks_every_check_on_cpu(tmp_path):
    """bench/gpu_check.py --dry: every method x fp32/bf16/fp16 through the real Runtime and Trainer (fp16 with its
    gradient scaler), the torchrun kill-and-resume check and the throughput bench, on CPU, so the GPU check
    cannot rot between the sessions that have a GPU."""
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu_check.py"), "--dry", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.load(open(out))["rows"]
    checks = [row["check"] for row in rows]
    assert {f"{m} {p}" for m in ("tinybert", "minilm", "minilmv2") for p in ("fp32", "bf16", "fp16")} <= set(checks)
    assert any(c.startswith("torchrun 1 process (gloo)") for c in checks) and all(row["ok"] for row in rows)
    assert all(row["rel_to_fp32"] == 0 for row in rows if row["check"].endswith("fp32"))
    # a GPU run without a GPU is refused in one line
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "gpu_check.py")], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no CUDA device" in r.stderr


def test_distill_breakdown_splits_every_step(tmp_path):
    """--breakdown: every method's step splits into teacher forward, student forward, loss, backward and optimizer;
    the forwards are caught even where a capture stops them early (MiniLM / MiniLMv2), and the parts add up."""
    out = tmp_path / "distill.json"
    r = subprocess.run([sys.executable, os.path.join(REPO, "bench", "bench_distill.py"), "--smoke", "--breakdown",
                        "--precisions", "fp32", "--repeat", "2", "--out", str(out)], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Where a step's time goes" in r.stdout
    data = json.load(open(out))
    from pipelines.methods import METHODS

    assert [b["method"] for b in data["breakdown"]] == list(METHODS)
    for b in data["breakdown"]:
        assert b["teacher_fwd_s"] > 0 and b["student_fwd_s"] > 0 and b["backward_s"] > 0 and b["optimizer_s"] > 0
        assert b["loss_s"] >= 0  # the two forwards run inside the objective's forward
        parts = ("teacher_fwd", "student_fwd", "loss", "backward", "optimizer")
        assert sum(b[f"{p}_s"] for p in parts) == pytest.approx(b["step_s"], rel=0.25)  # nothing counted twice
