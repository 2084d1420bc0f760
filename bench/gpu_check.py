"""The GPU check: one command that exercises the toolkit's CUDA paths and reports one table (<= 8 min on one GPU).

    python bench/gpu_check.py            # on a CUDA machine
    python bench/gpu_check.py --dry      # on CPU, tiny shapes, a few steps: the same code paths (the tests run it)

1. precision: every general-distillation method (the rows of pipelines/methods.py) x {fp32, bf16, fp16}, from
   the same random teacher, student and batches, through the toolkit's own Runtime and Trainer (autocast, fp16's
   gradient scaler, clipping, AdamW); the final loss of bf16 and fp16 must lie within --tolerance of fp32's and no
   loss may be inf/NaN. Data: random token ids (the check needs no files, so it runs on a bare machine).
2. distributed resume: tests/toy_train.py under a 1-process `torchrun` (NCCL on a GPU, gloo on CPU), killed by
   SIGKILL mid-run and rerun with the same command, must end bit-identical to an uninterrupted run.
3. throughput: bench/bench_distill.py, teacher 12x768 -> student 6x384 at batch 256 x 128 in bf16: tokens/s and
   the % of the card's own bf16 matmul rate (--dry: its smoke preset).

Writes bench/results/gpu_check.json; exits 1 when a check fails. On CPU without --dry it refuses (nothing to check).
fp16 on CPU (--dry) runs with KD_FP16_ON_CPU=1, which lets the Runtime take the fp16 path off CUDA.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
from bench_distill import SIZES, bert, student_sizes  # noqa: E402
from common import machine_info, report  # noqa: E402

from pipelines.methods import METHODS  # noqa: E402
from kdcore import distill  # noqa: E402
from kdcore.cli import ArgumentParser  # noqa: E402
from kdcore.runtime import Runtime, set_seed  # noqa: E402
from kdcore.trainer import train  # noqa: E402

PRECISIONS = ("fp32", "bf16", "fp16")


class RandomTokens(torch.utils.data.Dataset):
    """`n` sequences of `seq_len` random token ids (no padding), fixed by `seed`."""

    def __init__(self, n: int, seq_len: int, vocab: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, vocab, (n, seq_len), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return self.ids[i]

    @staticmethod
    def collate(rows):
        ids = torch.stack(rows)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def precision_run(method: str, precision: str, sizes: dict, steps: int, batch: int, seq_len: int, out: str) -> dict:
    """`steps` steps of `method` in `precision` through Runtime + Trainer; the losses it logged."""
    argv = ["--pregenerated_data", "-", "--teacher_model", "-", "--student_model", "-", "--output_dir", out,
            "--distill_method", method, "--max_steps", str(steps), "--train_batch_size", str(batch),
            "--learning_rate", "1e-4", "--logging_steps", "1", "--seed", "0"]
    argv += {"fp32": [], "bf16": ["--bf16"], "fp16": ["--fp16"]}[precision]
    args = distill.build_parser(METHODS).parse_args(argv)
    rt = Runtime(args)
    set_seed(0)  # the same teacher and student weights for every precision
    teacher = bert(*sizes["teacher"], seq_len).to(rt.device).eval()
    student = bert(*student_sizes(method, sizes), seq_len)
    objective = METHODS[method].build(args, teacher, student)
    data = RandomTokens(steps * batch, seq_len, sizes["teacher"][-1])
    start = time.time()
    train(rt, args, objective, data, RandomTokens.collate, batch, 1.0, lambda obj, folder: None, shuffle=False)
    with open(os.path.join(out, "train_log.jsonl"), encoding="utf-8") as f:
        losses = [json.loads(line)["loss"] for line in f]
    return {"losses": losses, "seconds": time.time() - start}


def check_precisions(sizes, steps, batch, seq_len, tolerance, tmp) -> list[dict]:
    rows = []
    for method in METHODS:
        runs = {p: precision_run(method, p, sizes, steps, batch, seq_len, os.path.join(tmp, f"{method}_{p}"))
                for p in PRECISIONS}
        fp32 = runs["fp32"]["losses"][-1]
        for p, run in runs.items():
            finite = all(math.isfinite(v) for v in run["losses"])
            rel = abs(run["losses"][-1] - fp32) / max(abs(fp32), 1e-12)
            rows.append({"check": f"{method} {p}", "final_loss": run["losses"][-1], "rel_to_fp32": rel,
                         "seconds": run["seconds"], "ok": finite and rel <= tolerance})
    return rows


def check_distributed_resume(tmp: str, dry: bool) -> dict:
    """toy_train.py under torchrun: SIGKILLed and rerun == uninterrupted, bit for bit."""
    from safetensors.torch import load_file

    toy = os.path.join(REPO, "tests", "toy_train.py")
    base = ["--num_examples", "48", "--train_batch_size", "4", "--num_train_epochs", "2", "--save_steps", "3"]
    if not dry:
        base += ["--dropout", "0.1"]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port", "29561"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    straight, killed = os.path.join(tmp, "ddp_straight"), os.path.join(tmp, "ddp_killed")
    first = subprocess.run([*launch, toy, "--output_dir", straight, *base], env=env, capture_output=True, text=True)
    second = subprocess.run([*launch, toy, "--output_dir", killed, *base, "--kill_at_forward", "17"], env=env,
                            capture_output=True, text=True)
    third = subprocess.run([*launch, toy, "--output_dir", killed, *base], env=env, capture_output=True, text=True)
    ok = first.returncode == 0 and second.returncode != 0 and third.returncode == 0
    same = False
    if ok:
        a = load_file(os.path.join(straight, "toy.safetensors"))
        b = load_file(os.path.join(killed, "toy.safetensors"))
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    detail = "" if ok else (first.stderr + second.stderr + third.stderr)[-400:]
    return {"check": f"torchrun 1 process ({backend}): kill, resume, bit-identical", "ok": ok and same,
            "detail": detail}


def check_throughput(tmp: str, dry: bool) -> dict:
    out = os.path.join(tmp, "distill.json")
    argv = ["--smoke"] if dry else ["--batch_size", "256", "--seq_len", "128", "--repeat", "3", "--precisions", "bf16"]
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_distill.py"), *argv, "--out", out],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"check": "throughput", "ok": False, "detail": proc.stderr[-400:]}
    with open(out, encoding="utf-8") as f:
        rows = json.load(f)["rows"]
    summary = "; ".join(f"{r.get('method')} {r.get('precision')}: {r.get('tokens_per_s', 0):,.0f} tok/s, "
                        f"{r.get('pct_of_matmul', 0):.1f} % of matmul" for r in rows)
    return {"check": "throughput 12x768 -> 6x384" + (" (smoke shapes)" if dry else ", batch 256 x 128"),
            "ok": True, "detail": summary}


def main(argv=None):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry", action="store_true", help="CPU, tiny shapes, a few steps", identifies=False)
    p.add_argument("--steps", type=int, default=None, help="steps per precision run (50; --dry: 4)",
                   identifies=False, range=">=1")
    p.add_argument("--tolerance", type=float, default=0.05, help="largest relative gap of a final loss to fp32's",
                   identifies=False, range=">0")
    p.add_argument("--out", default=os.path.join("bench", "results", "gpu_check.json"), identifies=False)
    args = p.parse_args(argv)
    if not args.dry and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device; run with --dry for the CPU walk-through", file=sys.stderr)
        return 2
    if args.dry:
        os.environ["KD_FP16_ON_CPU"] = "1"
    sizes = SIZES["smoke" if args.dry else "bench"]
    steps = args.steps or (4 if args.dry else 50)
    batch, seq_len = (2, 16) if args.dry else (32, 128)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        rows = check_precisions(sizes, steps, batch, seq_len, args.tolerance, tmp)
        rows.append(check_distributed_resume(tmp, args.dry))
        rows.append(check_throughput(tmp, args.dry))
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry else "cpu")
    report("GPU check" + (" (dry run on CPU)" if args.dry else ""), rows,
           ["check", "ok", "final_loss", "rel_to_fp32", "seconds", "detail"], args.out,
           extra={"machine": machine_info(device), "seconds": time.time() - start, "steps": steps})
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
