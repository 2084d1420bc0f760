"""MiniLMv2 relation loss: peak memory and time of one term's forward + backward, unchunked reference vs chunked.

One Q-Q (or K-K, V-V) relation term of MiniLMv2 between teacher states (B, T, 768) and student states (B, T, 384)
re-split into R relation heads, no padding, float32:

* `reference`: minilm.losses.masked_row_kl(scaled_dot_logits(...)) with autograd, every (B, R, T, T) tensor whole
  (the function the objective used before the chunked one);
* `chunked 2^k`: minilm.losses.self_attention_relation_kl, i.e. pairwise_row_kl: value and analytic gradient
  computed in chunks of relation heads (and examples), at most 2^k elements of a T x T map per chunk
  (`--chunk_elements`, default 2^24 = the first chunked version's size and MAX_CHUNK_ELEMENTS = today's default).

Time: median seconds of forward + backward over interleaved rounds (reference, chunked, reference, ...) in this
process (no warm-up round: the first call of each is timed too). Peak memory: each (implementation, R) runs once more in a fresh child process; on CPU the figure is the
growth of its peak resident memory (VmHWM) across the one forward + backward, after the inputs exist; on CUDA
torch.cuda.max_memory_allocated minus the memory allocated before the call. The values and gradients of the two
implementations are compared too (max relative difference).

    python bench/bench_relation_loss.py [--full | --smoke] [--batch_size 8] [--seq_len 512]
                                        [--relation_heads 48 64] [--chunk_elements 16777216 1048576]
                                        [--out bench/results/relation_loss.json]
"""
import json
import os
import resource
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, apply_preset, bench_parser, machine_info, report, timed_round_robin  # noqa: E402

from minilm.losses import (  # noqa: E402
    MAX_CHUNK_ELEMENTS, masked_row_kl, scaled_dot_logits, self_attention_relation_kl, split_relation_heads)

TEACHER_DIM, STUDENT_DIM = 768, 384
PRESETS = {
    "smoke": dict(batch_size=2, seq_len=32, relation_heads=[48], repeat=1),
    "quick": dict(batch_size=8, seq_len=512, relation_heads=[48, 64], repeat=2),
    "full": dict(batch_size=8, seq_len=512, relation_heads=[48, 64], repeat=5),
}


def reference_relation_kl(teacher, student, mask, r):
    t, s = split_relation_heads(teacher, r), split_relation_heads(student, r)
    return masked_row_kl(scaled_dot_logits(t, t, mask), scaled_dot_logits(s, s, mask), mask)


def make_inputs(batch, seq_len, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(batch, seq_len, TEACHER_DIM, generator=g).to(device)
    student = torch.randn(batch, seq_len, STUDENT_DIM, generator=g).to(device).requires_grad_()
    return teacher, student, torch.ones(batch, seq_len, dtype=torch.long, device=device)


def impl_name(chunk_elements: int | None) -> str:
    return "reference" if chunk_elements is None else f"chunked 2^{chunk_elements.bit_length() - 1}"


def forward_backward(chunk_elements, teacher, student, mask, r):
    """One forward + backward: the reference when chunk_elements is None, else the chunked loss."""
    student.grad = None
    if chunk_elements is None:
        loss = reference_relation_kl(teacher, student, mask, r)
    else:
        loss = self_attention_relation_kl(teacher, student, mask, r, max_chunk_elements=chunk_elements)
    loss.backward()
    return loss.detach(), student.grad


def child(chunk_elements, batch, seq_len, r):
    """Peak memory of one forward + backward in this fresh process (MB), printed as JSON."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, student, mask = make_inputs(batch, seq_len, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        forward_backward(chunk_elements, teacher, student, mask, r)
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        before = rss_peak_kib(reset=True)
        forward_backward(chunk_elements, teacher, student, mask, r)
        peak = (rss_peak_kib() - before) / 1024
    print(json.dumps({"peak_MB": peak}))


def rss_peak_kib(reset: bool = False) -> int:
    """Peak resident memory of this process (KiB): VmHWM of /proc/self/status, which `reset` first lowers to the
    current RSS (Linux). ru_maxrss is no use here: a child spawned by a large parent inherits the parent's peak."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // (1024 if sys.platform == "darwin" else 1)


def peak_memory(chunk_elements, batch, seq_len, r) -> float:
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", str(chunk_elements or 0), str(batch),
                           str(seq_len), str(r)], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_relation_loss.py: error: child {impl_name(chunk_elements)} R={r} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_MB"]


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_child":
        return child(int(argv[1]) or None, int(argv[2]), int(argv[3]), int(argv[4]))
    p = bench_parser(__doc__, {"quick": "default: batch 8 x 512 tokens, 48 and 64 relation heads, 2 rounds",
                               "full": "the same shapes, 5 rounds", "smoke": "tiny shapes (tests)"})
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--seq_len", type=int, default=None)
    p.add_argument("--relation_heads", type=int, nargs="+", default=None)
    p.add_argument("--chunk_elements", type=int, nargs="+", default=[2**24, MAX_CHUNK_ELEMENTS],
                   help="chunk sizes of the chunked loss to time beside the reference (elements, powers of 2)")
    p.add_argument("--repeat", type=int, default=None, help="timed rounds (interleaved)")
    p.add_argument("--out", default=os.path.join("bench", "results", "relation_loss.json"))
    args = p.parse_args(argv)
    preset = apply_preset(args, PRESETS)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, student, mask = make_inputs(args.batch_size, args.seq_len, device)
    impls = {impl_name(c): c for c in [None, *dict.fromkeys(args.chunk_elements)]}
    rows = []
    for r in args.relation_heads:
        last = {}

        def run(impl, r=r):  # keeps the last loss and gradient of each implementation for the comparison
            loss, grad = forward_backward(impls[impl], teacher, student, mask, r)
            last[impl] = (loss, grad.clone())

        seconds = timed_round_robin({impl: (lambda impl=impl: run(impl)) for impl in impls}, repeat=args.repeat,
                                    warmup=0)
        ref_loss, ref_grad = last.pop("reference")
        diffs = {impl: (float((loss - ref_loss).abs() / ref_loss.abs()),
                        float((grad - ref_grad).abs().max() / ref_grad.abs().max())) for impl, (loss, grad) in last.items()}
        del last, ref_grad
        peaks = {impl: peak_memory(c, args.batch_size, args.seq_len, r) for impl, c in impls.items()}
        for impl in impls:
            rows.append({"relation_heads": r, "impl": impl, "fwd_bwd_s": seconds[impl],
                         "peak_MB": peaks[impl], "time_vs_reference": seconds[impl] / seconds["reference"],
                         "memory_vs_reference": peaks[impl] / peaks["reference"],
                         "value_rel_diff": diffs.get(impl, (0.0, 0.0))[0],
                         "grad_rel_diff": diffs.get(impl, (0.0, 0.0))[1]})
    one_map = args.batch_size * args.seq_len * args.seq_len * 4 / 2**20
    report(f"MiniLMv2 relation loss, one term forward + backward, batch {args.batch_size} x {args.seq_len}, "
           f"teacher {TEACHER_DIM} -> student {STUDENT_DIM} dims ({device.type}, {torch.get_num_threads()} threads)",
           rows, ["relation_heads", "impl", "fwd_bwd_s", "time_vs_reference", "peak_MB", "memory_vs_reference",
                  "value_rel_diff", "grad_rel_diff"], args.out,
           {"machine": machine_info(device), "preset": preset, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "repeat": args.repeat, "chunk_elements": args.chunk_elements, "default_chunk_elements": MAX_CHUNK_ELEMENTS,
            "fp32_MB_of_one_BxRxTxT_tensor": {str(r): one_map * r for r in args.relation_heads}})


if __name__ == "__main__":
    main()
