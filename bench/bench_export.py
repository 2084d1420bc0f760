"""Speed of an exported student against its teacher: sentences/s at sequence length 128, batch 1 and 32, 1 and 2
threads, for the teacher (PyTorch fp32) and the student (PyTorch fp32, ONNX fp32, ONNX int8), plus size on disk.

    python bench/bench_export.py --teacher TEACHER --student STUDENT [--onnx_dir STUDENT/onnx]
                                 [--batch_sizes 1 32] [--threads 1 2] [--seq_len 128] [--repeat 5]
                                 [--out bench/results/export_onnx.json]

--onnx_dir is a folder made by export_onnx.py (default STUDENT/onnx); without one, the student is exported (fp32 and
int8, the export's defaults, no quality gate) into a temporary folder first. Writes a Markdown table (.md), JSON and
a bar chart (.png) beside --out. Every model computes what its export does: the pooled sentence embedding of an
encoder, a classifier's logits. Candidates are timed in interleaved rounds within each (batch, threads) setting, so
the ratios are fair on a shared machine; ONNX Runtime's idle threads sleep instead of spinning between calls, so
they take no CPU from the PyTorch runs timed in between.
"""
import argparse
import os
import tempfile

import numpy as np
import torch

from common import machine_info, timed_round_robin
from kdcore.cli import ArgumentParser, parse_args, run_main
from kdcore.errors import UserError
from kdcore.files import atomic_path, atomic_write_json, atomic_write_text, read_json_file
from kdcore.modeling import load_model, load_tokenizer, read_model_config
from kdcore.onnx_export import (CLASSIFIER, FP32_FILE, INT8_FILE, RESULTS_FILE, SENTENCE_EMBEDDING, ExportedModule,
                                export_onnx, input_names, ort_session, quantize_int8, source_identity, token_batches)
from kdcore.sentence_embeddings import read_pooling

CANDIDATES = ("teacher PyTorch fp32", "student PyTorch fp32", "student ONNX fp32", "student ONNX int8")


def build_parser():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, identifies=False, help="the teacher's model folder")
    p.add_argument("--student", required=True, identifies=False, help="the student's model folder")
    p.add_argument("--onnx_dir", default=None, identifies=False, help="the student's export (default: STUDENT/onnx)")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32], identifies=False, range=">=1")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], identifies=False, range=">=1")
    p.add_argument("--seq_len", type=int, default=128, identifies=False, range=">=2")
    p.add_argument("--repeat", type=int, default=5, identifies=False, range=">=1")
    p.add_argument("--min_seconds", type=float, default=0.2, identifies=False, range=">=0",
                   help="each timed call repeats the forward until it takes at least this long")
    p.add_argument("--out", default=os.path.join("bench", "results", "export_onnx.json"), identifies=False)
    return p


def _module(path: str) -> ExportedModule:
    config = read_model_config(path, "--student")
    if any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or [])):
        from transformers import AutoModelForSequenceClassification

        return ExportedModule(load_model(path, AutoModelForSequenceClassification, argname=path).eval(), CLASSIFIER)
    pooling, normalize = read_pooling(path)
    return ExportedModule(load_model(path, argname=path).eval(), SENTENCE_EMBEDDING, pooling, normalize)


def _weights_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path) if n.endswith(".safetensors"))


def _repeated(fn, min_seconds: float):
    """`fn` called n times per timed call, n chosen so one timed call takes at least `min_seconds`."""
    import time

    start = time.perf_counter()
    fn()
    n = max(1, int(np.ceil(min_seconds / max(time.perf_counter() - start, 1e-6))))

    def run():
        for _ in range(n):
            fn()
    return run, n


def main(argv=None):
    args = parse_args(build_parser(), argv)
    teacher, student = _module(args.teacher), _module(args.student)
    tokenizer = load_tokenizer(args.student, "--student")
    names = input_names(student.model, tokenizer)
    onnx_dir = args.onnx_dir or os.path.join(args.student, "onnx")
    record = os.path.join(onnx_dir, RESULTS_FILE)
    if os.path.isfile(record):  # an export of other weights would time another model
        made_from = (read_json_file(record, "--onnx_dir", "results file").get("source") or {}).get("sha256")
        if made_from != source_identity(args.student)["sha256"]:
            raise UserError(f"--onnx_dir {onnx_dir}: an export of other weights than --student {args.student}")
    with tempfile.TemporaryDirectory(prefix="kd-bench-export-") as tmp:
        if not all(os.path.isfile(os.path.join(onnx_dir, f)) for f in (FP32_FILE, INT8_FILE)):
            print(f"no export in {onnx_dir}: exporting the student into a temporary folder")
            onnx_dir = tmp
            example = token_batches(tokenizer, ["an example sentence to trace the graph with", "short"], None, names,
                                    2, args.seq_len)[0][1]
            export_onnx(student, names, example, os.path.join(tmp, FP32_FILE))
            quantize_int8(os.path.join(tmp, FP32_FILE), os.path.join(tmp, INT8_FILE))
        sizes = {CANDIDATES[0]: _weights_bytes(args.teacher), CANDIDATES[1]: _weights_bytes(args.student),
                 CANDIDATES[2]: os.path.getsize(os.path.join(onnx_dir, FP32_FILE)),
                 CANDIDATES[3]: os.path.getsize(os.path.join(onnx_dir, INT8_FILE))}
        rates, calls = {c: {} for c in CANDIDATES}, {}
        for threads in args.threads:
            torch.set_num_threads(threads)
            sessions = {c: ort_session(os.path.join(onnx_dir, f), threads, spinning=False)
                        for c, f in ((CANDIDATES[2], FP32_FILE), (CANDIDATES[3], INT8_FILE))}
            for batch in args.batch_sizes:
                # every row exactly seq_len tokens (random ids of the real vocabulary, no padding)
                ids = np.random.RandomState(0).randint(1000, min(30000, len(tokenizer)), (batch, args.seq_len))
                feed = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, dtype=np.int64),
                        "token_type_ids": np.zeros_like(ids, dtype=np.int64)}
                feed = {n: feed[n] for n in names}
                tfeed = {n: torch.from_numpy(v) for n, v in feed.items()}

                def torch_fn(module):
                    def run():
                        with torch.inference_mode():
                            module(**tfeed)
                    return run

                fns = {CANDIDATES[0]: torch_fn(teacher), CANDIDATES[1]: torch_fn(student),
                       **{c: (lambda s=s: s.run(None, feed)) for c, s in sessions.items()}}
                key = f"batch {batch}, {threads} thread{'s' if threads > 1 else ''}"
                repeated = {c: _repeated(fn, args.min_seconds) for c, fn in fns.items()}
                seconds = timed_round_robin({c: r for c, (r, _) in repeated.items()}, repeat=args.repeat)
                for c, (_, n) in repeated.items():
                    rates[c][key] = batch * n / seconds[c]
                calls[key] = {c: n for c, (_, n) in repeated.items()}
                print(f"{key}: " + ", ".join(f"{c} {rates[c][key]:.1f}/s" for c in CANDIDATES), flush=True)
    rows = [{"model": c, "bytes": sizes[c], "sentences_per_s": rates[c]} for c in CANDIDATES]
    keys = list(rates[CANDIDATES[0]])
    base = rates[CANDIDATES[0]]
    for r in rows:
        r["vs_teacher"] = {k: r["sentences_per_s"][k] / base[k] for k in keys}
    info = {"machine": machine_info(torch.device("cpu")), "seq_len": args.seq_len, "repeat": args.repeat,
            "teacher": os.path.abspath(args.teacher), "student": os.path.abspath(args.student),
            "onnx_dir": os.path.abspath(args.onnx_dir or os.path.join(args.student, "onnx")), "calls_per_timing": calls}
    atomic_write_json({"benchmark": f"ONNX export speed at seq {args.seq_len}", **info, "rows": rows}, args.out)
    table = markdown_table(rows, keys)
    stem = os.path.splitext(args.out)[0]
    atomic_write_text(table, stem + ".md")
    plot(rows, keys, stem + ".png", args.seq_len)
    print(f"\n## ONNX export speed at seq {args.seq_len} (sentences/s; x = vs the teacher)\n{table}(written to {args.out})")


def markdown_table(rows: list[dict], keys: list[str]) -> str:
    head = "| model | size on disk | " + " | ".join(keys) + " |"
    lines = [head, "|---|---|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r['sentences_per_s'][k]:,.1f} ({r['vs_teacher'][k]:.2f}x)" for k in keys]
        lines.append(f"| {r['model']} | {r['bytes'] / 1e6:.1f} MB | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], keys: list[str], path: str, seq_len: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.2 + 1.8 * len(keys), 4.2))
    width = 0.8 / len(rows)
    x = np.arange(len(keys))
    for i, r in enumerate(rows):
        values = [r["sentences_per_s"][k] for k in keys]
        bars = ax.bar(x + (i - (len(rows) - 1) / 2) * width, values, width, label=f"{r['model']} ({r['bytes'] / 1e6:.0f} MB)")
        ax.bar_label(bars, labels=[f"{v:.0f}" for v in values], fontsize=7)
    ax.set_xticks(x, keys)
    ax.set_ylabel("sentences / s")
    ax.set_title(f"Inference at sequence length {seq_len} (CPU)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    run_main(main)
