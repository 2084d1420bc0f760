"""MiniLMv2 relation loss: peak memory and time of one term's forward + backward, unchunked reference vs chunked.

One Q-Q (or K-K, V-V) relation term of MiniLMv2 between teacher states (B, T, 768) and student states (B, T, 384)
re-split into R relation heads, no padding, float32:

* `reference`: minilm.losses.masked_row_kl(scaled_dot_logits(...)) with autograd, every (B, R, T, T) tensor whole
  (the function the objective used before the chunked one);
* `chunked 2^k`: minilm.losses.self_attention_relation_kl, i.e. pairwise_row_kl: value and analytic gradient
  computed in chunks of relation heads (and examples), at most 2^k elements of a T x T map per chunk
  (`--chunk_elements`, default 2^24 = the first chunked version's size and MAX_CHUNK_ELEMENTS = today's default).

Every measurement is one forward + backward in a fresh child process, in interleaved rounds (reference, chunked
2^24, chunked 2^20, reference, ...; `--repeat` rounds, no warm-up: the first call is what a training step pays
too). The child reports its seconds, its peak memory (CPU: the growth of the process's peak resident memory,
VmHWM, across the call, after the inputs exist; CUDA: torch.cuda.max_memory_allocated minus what was allocated
before), the loss and the gradient. Each row gives the median seconds and peak over rounds, and the max relative
difference of its value and gradient from the reference's.

    python bench/bench_relation_loss.py [--full | --smoke] [--batch_size 8] [--seq_len 512]
                                        [--relation_heads 48 64] [--chunk_elements 16777216 1048576]
                                        [--out bench/results/relation_loss.json]
"""
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import REPO, apply_preset, bench_parser, machine_info, median, report  # noqa: E402
from run_with_rusage import maxrss_to_mb, vmhwm_mb  # noqa: E402

from minilm.losses import (  # noqa: E402
    MAX_CHUNK_ELEMENTS, masked_row_kl, scaled_dot_logits, self_attention_relation_kl, split_relation_heads)

TEACHER_DIM, STUDENT_DIM = 768, 384
PRESETS = {
    "smoke": dict(batch_size=2, seq_len=32, relation_heads=[48], repeat=1),
    "quick": dict(batch_size=8, seq_len=512, relation_heads=[48, 64], repeat=1),
    "full": dict(batch_size=8, seq_len=512, relation_heads=[48, 64], repeat=3),
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


def child(chunk_elements, batch, seq_len, r, result_path):
    """One forward + backward in this fresh process: seconds, peak memory (MB), loss and gradient -> safetensors."""
    from safetensors.torch import save_file

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    teacher, student, mask = make_inputs(batch, seq_len, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = peak_rss_mb(reset=True)
    t0 = time.perf_counter()
    loss, grad = forward_backward(chunk_elements, teacher, student, mask, r)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    else:
        peak = peak_rss_mb() - before
    seconds = time.perf_counter() - t0
    save_file({"loss": loss.reshape(1).cpu(), "grad": grad.cpu().contiguous(),
               "seconds": torch.tensor([seconds], dtype=torch.float64),
               "peak_MB": torch.tensor([peak], dtype=torch.float64)}, result_path)


def peak_rss_mb(reset: bool = False) -> float:
    """This process's peak resident memory (MB): VmHWM (run_with_rusage.vmhwm_mb), else ru_maxrss."""
    peak = vmhwm_mb(reset)
    if peak is None:
        peak = maxrss_to_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return peak


def measure(chunk_elements, batch, seq_len, r, workdir) -> dict:
    """`child` in a fresh process: its seconds, peak_MB, loss and grad."""
    from safetensors.torch import load_file

    result = os.path.join(workdir, "result.safetensors")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--_child", str(chunk_elements or 0), str(batch),
                           str(seq_len), str(r), result], cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_relation_loss.py: error: child {impl_name(chunk_elements)} R={r} failed:\n"
                 f"{proc.stderr[-2000:]}")
    out = load_file(result)
    os.remove(result)
    return {"seconds": float(out["seconds"]), "peak_MB": float(out["peak_MB"]), "loss": out["loss"], "grad": out["grad"]}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--_child":
        return child(int(argv[1]) or None, int(argv[2]), int(argv[3]), int(argv[4]), argv[5])
    p = bench_parser(__doc__, {"quick": "default: batch 8 x 512 tokens, 48 and 64 relation heads, 1 round",
                               "full": "the same shapes, 3 rounds", "smoke": "tiny shapes (tests)"})
    p.add_argument("--batch_size", type=int, default=None, identifies=False, range=">=1")
    p.add_argument("--seq_len", type=int, default=None, identifies=False, range=">=1")
    p.add_argument("--relation_heads", type=int, nargs="+", default=None, identifies=False, range=">=1")
    p.add_argument("--chunk_elements", type=int, nargs="+", default=[2**24, MAX_CHUNK_ELEMENTS],
                   help="chunk sizes of the chunked loss to time beside the reference (elements, powers of 2)",
                   identifies=False, range=">=1")
    p.add_argument("--repeat", type=int, default=None, help="rounds (interleaved); each call in a fresh process",
                   identifies=False, range=">=1")
    p.add_argument("--out", default=os.path.join("bench", "results", "relation_loss.json"), identifies=False)
    args = p.parse_args(argv)
    preset = apply_preset(args, PRESETS)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impls = {impl_name(c): c for c in [None, *dict.fromkeys(args.chunk_elements)]}
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for r in args.relation_heads:
            runs = {impl: [] for impl in impls}
            for _ in range(args.repeat):  # interleaved rounds
                for impl, c in impls.items():
                    runs[impl].append(measure(c, args.batch_size, args.seq_len, r, workdir))
            ref = runs["reference"][-1]
            seconds = {impl: median([m["seconds"] for m in ms]) for impl, ms in runs.items()}
            peaks = {impl: median([m["peak_MB"] for m in ms]) for impl, ms in runs.items()}
            for impl, ms in runs.items():
                new = ms[-1]
                rows.append({"relation_heads": r, "impl": impl, "fwd_bwd_s": seconds[impl], "peak_MB": peaks[impl],
                             "time_vs_reference": seconds[impl] / seconds["reference"],
                             "memory_vs_reference": peaks[impl] / peaks["reference"],
                             "value_rel_diff": float((new["loss"] - ref["loss"]).abs().max() / ref["loss"].abs().max()),
                             "grad_rel_diff": float((new["grad"] - ref["grad"]).abs().max() / ref["grad"].abs().max())})
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
