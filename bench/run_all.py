"""Run every benchmark, write each JSON under bench/results/, print all tables (also saved as SUMMARY.md).

    python bench/run_all.py            # quick (default): about 5-10 minutes on a 2-core CPU
    python bench/run_all.py --full     # more steps / rows / rounds, BERT-base masked LM for augmentation
    python bench/run_all.py --smoke    # tiny settings, seconds (used by tests/test_bench.py)
    python bench/run_all.py --only distill augment

Each benchmark runs in its own process (one after the other, so they do not compete for the cores); a failing
one is reported and the others still run (exit status 1 at the end). Real data: ../shared/data, or set
KD_SHARED_DATA / --data_dir. Progress bars and logs of each benchmark go to bench/results/<name>.log.
"""
import argparse
import datetime
import os
import platform
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
from common import cpu_model_and_flags  # noqa: E402

from kdcore.cli import ArgumentParser  # noqa: E402
from kdcore.files import atomic_write_text  # noqa: E402
DATA_SCRIPTS = {"pregenerate", "augment", "corpus"}  # benchmarks that read the real data folder

# name: (script, extra args per mode). Scripts with --quick/--full/--smoke presets get the mode flag itself.
BENCHMARKS = {
    "inference": ("bench_inference.py", {"smoke": ["--batch_size", "1", "--seq_len", "16", "--repeat", "1", "--models",
                                                   "BERT-base 12x768", "TinyBERT 4x312"],
                                         "quick": [], "full": ["--repeat", "10"]}),
    "distill": ("bench_distill.py", "preset"),
    "relation_loss": ("bench_relation_loss.py", "preset"),
    "corpus": ("bench_corpus.py", "preset"),  # after distill: compares the loader with distill.json's step rate
    "pregenerate": ("bench_pregenerate.py", "preset"),
    "augment": ("bench_augment.py", "preset"),
    "decode": ("bench_decode.py", {"smoke": ["--examples", "1", "--batch_size", "1", "--beams", "1", "2",
                                             "--max_tgt_length", "3"],
                                   "quick": ["--examples", "4"], "full": ["--examples", "32"]}),
}


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick", help="default", identifies=False)
    mode.add_argument("--full", dest="mode", action="store_const", const="full", identifies=False)
    mode.add_argument("--smoke", dest="mode", action="store_const", const="smoke", identifies=False)
    p.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these benchmarks", identifies=False)
    p.add_argument("--results_dir", default=os.path.join(BENCH, "results"), identifies=False)
    p.add_argument("--data_dir", default=None, help="real data folder (default: $KD_SHARED_DATA or ../shared/data)",
                   identifies=False)
    args = p.parse_args(argv)
    mode = args.mode or "quick"
    os.makedirs(args.results_dir, exist_ok=True)
    names = args.only or list(BENCHMARKS)
    tables, failed, timings = [], [], {}
    started = datetime.datetime.now().astimezone()
    for name in names:
        script, extra = BENCHMARKS[name]
        path = os.path.join(BENCH, script)
        if not os.path.isfile(path):
            print(f"\n## {name}: skipped ({script} is not in this checkout)")
            continue
        cmd = [sys.executable, path, *([f"--{mode}"] if extra == "preset" else extra[mode]),
               "--out", os.path.join(args.results_dir, f"{name}.json")]
        if args.data_dir and name in DATA_SCRIPTS:
            cmd += ["--data_dir", args.data_dir]
        print(f"\n# {name}: {' '.join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:])}",
              flush=True)
        log_path = os.path.join(args.results_dir, f"{name}.log")
        t0 = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
        timings[name] = time.perf_counter() - t0
        print(proc.stdout, end="", flush=True)
        if proc.returncode != 0:
            failed.append(name)
            with open(log_path) as log:
                tail = log.read()[-3000:]
            print(f"{name} FAILED (exit {proc.returncode}); end of {log_path}:\n{tail}", flush=True)
        else:
            tables.append(proc.stdout.strip())
        print(f"({name}: {timings[name]:.0f} s)", flush=True)
    cpu, flags = cpu_model_and_flags()
    summary = [f"# Benchmarks ({mode}), {started:%Y-%m-%d %H:%M %Z}, {platform.node() or 'host'}: "
               f"{cpu} ({', '.join(flags) or 'no AVX2'}), {os.cpu_count()} CPUs",
               *tables,
               "Wall time per benchmark: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())]
    atomic_write_text("\n\n".join(summary) + "\n", os.path.join(args.results_dir, "SUMMARY.md"))
    print(f"\nTotal {sum(timings.values()):.0f} s; tables in {os.path.join(args.results_dir, 'SUMMARY.md')}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
