"""General-distillation step throughput: teacher 12x768 (BERT-base shape) -> student 6x384, fp32 and bf16.

One step is what the training runtime does per optimizer step: the real objective's forward under autocast (frozen
teacher without gradients + student), backward, global-norm clipping (1.0), AdamW step, zero_grad. Methods:
`minilmv2` (minilm.v2.MiniLMv2Objective, Q-Q/K-K/V-V relations of the last layers, 48 relation heads),
`minilm` (minilm.v1.MiniLMv1Objective: attention + value relation) and `tinybert`
(tinybert.intermediate.TinyBertIntermediateObjective: embeddings, every hidden state and attention score map).
Random weights (speed does not depend on them), random token ids, no padding: tokens per step = batch x seq.

The table sets the achieved model FLOP/s beside this machine's own dense matmul rate in the same precision
(bench.common.matmul_flops_per_s, 2048^3 products), measured right before each timed step, in interleaved rounds
over the configs; pct_of_matmul ("MFU") is the median over rounds of (step FLOP/s) / (its paired matmul rate).
Model FLOPs per step, with N = batch x seq tokens, T = seq, P = weights of the nn.Linear layers of the encoder
layers that run (embeddings, LayerNorm, softmax, GELU, pooler, the loss terms' own small matmuls and the
optimizer update are not counted: a few percent of the FLOPs, though not of the time; MiniLMv2's relation
softmaxes over B x 48 x T x T are memory-bound and take about a fifth of an fp32 step on a 2-core CPU),
h = hidden size, L = layers:

    teacher forward          F_t = N * (2 * P_t + 4 * L_t * T * h_t)          (QK^T and AV: 2 * 2 * T * h per token)
    student fwd + bwd        F_s = 3 * N * (2 * P_s + 4 * L_s * T * h_s)       (backward = 2 x forward)
    TinyBERT's fit_dense     F_w = 3 * N * 2 * P_w * (L_s + 1)                 (applied to L_s + 1 hidden states)
    step FLOPs = F_t + F_s (+ F_w);  MFU = step FLOPs / step seconds / matmul FLOP/s

For MiniLM the student's last layer after Q/K/V gets no gradient, so F_s slightly over-counts its backward.

    python bench/bench_distill.py [--full | --smoke] [--methods minilmv2 tinybert minilm] [--precisions fp32 bf16]
                                  [--batch_size 32] [--seq_len 128] [--repeat N] [--out bench/results/distill.json]
"""
import contextlib
import os
import sys
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    apply_preset, bench_parser, machine_info, matmul_flops_per_s, median, report, timed)

from kdcore.modeling import encoder_layers  # noqa: E402
from kdcore.runtime import set_seed  # noqa: E402
from kdcore.trainer import build_optimizer  # noqa: E402

# name: (layers, hidden, heads, intermediate, vocab)
SIZES = {
    "bench": {"teacher": (12, 768, 12, 3072, 30522), "student": (6, 384, 12, 1536, 30522), "relation_heads": 48},
    # smoke: tiny shapes that keep the methods' constraints (layers divide, equal heads, relation heads divide)
    "smoke": {"teacher": (2, 96, 4, 192, 1000), "student": (1, 48, 4, 96, 1000), "relation_heads": 48},
}
PRESETS = {  # repeat = timed steps per config (median), warmup = untimed steps per config
    "smoke": dict(repeat=1, warmup=1, batch_size=2, seq_len=16, matmul_n=128),
    "quick": dict(repeat=3, warmup=1, batch_size=32, seq_len=128, matmul_n=2048),
    "full": dict(repeat=5, warmup=2, batch_size=32, seq_len=128, matmul_n=2048),
}


def bert(layers, hidden, heads, intermediate, vocab, seq_len):
    from transformers import BertConfig, BertModel

    config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                        intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=max(512, seq_len))
    return BertModel(config)


def linear_weights(modules) -> int:
    return sum(m.weight.numel() for mod in modules for m in mod.modules() if isinstance(m, nn.Linear))


def step_flops(objective, method: str, tokens: int, seq_len: int) -> float:
    """Model FLOPs of one step (formula in the module docstring)."""
    t_layers, s_layers = encoder_layers(objective.teacher), encoder_layers(objective.student)
    t_h, s_h = objective.teacher.config.hidden_size, objective.student.config.hidden_size
    teacher = tokens * (2 * linear_weights(t_layers) + 4 * len(t_layers) * seq_len * t_h)
    student = 3 * tokens * (2 * linear_weights(s_layers) + 4 * len(s_layers) * seq_len * s_h)
    fit = 3 * tokens * 2 * objective.fit_dense.weight.numel() * (len(s_layers) + 1) if method == "tinybert" else 0
    return float(teacher + student + fit)


def build_objective(method: str, teacher, sizes: dict, seq_len: int):
    from minilm.v1 import MiniLMv1Objective
    from minilm.v2 import MiniLMv2Objective
    from tinybert.intermediate import TinyBertIntermediateObjective

    student = bert(*sizes["student"], seq_len)
    if method == "tinybert":
        return TinyBertIntermediateObjective(teacher, student)
    if method == "minilm":
        return MiniLMv1Objective(teacher, student)
    return MiniLMv2Objective(teacher, student, num_relation_heads=sizes["relation_heads"])


def make_step(objective, batch, amp_dtype, device):
    """One optimizer step as kdcore.trainer.Trainer does it (AdamW without decay on 1-D weights, clip 1.0)."""
    args = SimpleNamespace(learning_rate=1e-4, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8)
    optimizer = build_optimizer(objective, args)
    params = [p for p in objective.parameters() if p.requires_grad]
    last = {}

    def step():
        ctx = torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        with ctx:
            losses = objective(**batch)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last["loss"] = float(losses["loss"].detach())

    return step, last


def main(argv=None):
    p = bench_parser(__doc__, {"quick": "default: 1 warm-up + 3 timed steps per config",
                               "full": "2 warm-up + 5 timed steps per config",
                               "smoke": "tiny models, 1 step (tests)"})
    p.add_argument("--methods", nargs="+", choices=["minilmv2", "tinybert", "minilm"],
                   default=["minilmv2", "tinybert", "minilm"])
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--batch_size", type=int, default=None)
    p.add_argument("--seq_len", type=int, default=None)
    p.add_argument("--repeat", type=int, default=None, help="timed steps per config (interleaved rounds)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per config first")
    p.add_argument("--matmul_n", type=int, default=None, help="size of the n x n x n yardstick matmul (2048)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=os.path.join("bench", "results", "distill.json"))
    args = p.parse_args(argv)
    preset = apply_preset(args, PRESETS)
    sizes = SIZES["smoke" if preset == "smoke" else "bench"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_seed(args.seed)

    teacher = bert(*sizes["teacher"], args.seq_len)
    gen = torch.Generator().manual_seed(args.seed)
    vocab = sizes["teacher"][4]
    batch = {
        "input_ids": torch.randint(1000 % vocab, vocab, (args.batch_size, args.seq_len), generator=gen),
        "attention_mask": torch.ones(args.batch_size, args.seq_len, dtype=torch.long),
        "token_type_ids": torch.zeros(args.batch_size, args.seq_len, dtype=torch.long),
    }
    batch = {k: v.to(device) for k, v in batch.items()}
    tokens = args.batch_size * args.seq_len
    dtypes = {"fp32": None, "bf16": torch.bfloat16}

    steps = {}
    for method in args.methods:
        objective = build_objective(method, teacher, sizes, args.seq_len).to(device).train()
        flops = step_flops(objective, method, tokens, args.seq_len)
        for prec in args.precisions:
            step, last = make_step(objective, batch, dtypes[prec], device)
            steps[method, prec] = (step, flops, last)
    # Interleaved rounds (a, b, c, a, b, c, ...), and every step is paired with a yardstick matmul measured just
    # before it: a busy moment of a shared machine then hits a step and its yardstick alike.
    rounds = {key: [] for key in steps}
    for r in range(args.warmup + args.repeat):
        for (method, prec), (step, _, _) in steps.items():
            rate = matmul_flops_per_s(device, dtypes[prec] or torch.float32, n=args.matmul_n, repeat=3)
            seconds = timed(step, repeat=1, warmup=0)
            if r >= args.warmup:
                rounds[method, prec].append({"step_s": seconds, "matmul_GFLOP_s": rate / 1e9})

    rows = []
    for (method, prec), (_, flops, last) in steps.items():
        rs = rounds[method, prec]
        s = median([x["step_s"] for x in rs])
        rows.append({"method": method, "precision": prec, "step_s": s, "tokens_per_s": tokens / s,
                     "model_GFLOP_per_step": flops / 1e9, "achieved_GFLOP_s": flops / s / 1e9,
                     "matmul_GFLOP_s": median([x["matmul_GFLOP_s"] for x in rs]),
                     "pct_of_matmul": median([100 * flops / x["step_s"] / 1e9 / x["matmul_GFLOP_s"] for x in rs]),
                     "loss": last["loss"], "rounds": rs})
    t, s = sizes["teacher"], sizes["student"]
    report(f"General distillation step, teacher {t[0]}x{t[1]} -> student {s[0]}x{s[1]}, batch {args.batch_size} x "
           f"{args.seq_len} ({device.type}, {torch.get_num_threads()} threads)", rows,
           ["method", "precision", "step_s", "tokens_per_s", "achieved_GFLOP_s", "matmul_GFLOP_s", "pct_of_matmul"],
           args.out,
           {"machine": machine_info(device), "preset": preset, "teacher": dict(zip(
               ["layers", "hidden", "heads", "intermediate", "vocab"], t)), "student": dict(zip(
               ["layers", "hidden", "heads", "intermediate", "vocab"], s)), "batch_size": args.batch_size,
            "seq_len": args.seq_len, "repeat": args.repeat, "warmup": args.warmup, "matmul_n": args.matmul_n,
            "flops_formula": "teacher fwd N*(2*P_t + 4*L_t*T*h_t) + student fwd+bwd 3*N*(2*P_s + 4*L_s*T*h_s) "
                             "[+ tinybert fit_dense 3*N*2*P_w*(L_s+1)]; P = encoder nn.Linear weights"})


if __name__ == "__main__":
    main()
