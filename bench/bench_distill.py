"""General-distillation step throughput: teacher 12x768 (BERT-base shape) -> student 6x384 (or, with --sizes demo,
the demo's 6x384 -> 3x384), fp32 and bf16.

One step is what the training runtime does per optimizer step: the real objective's forward under autocast (frozen
teacher without gradients + student), backward, global-norm clipping (1.0), AdamW step, zero_grad. Methods: every
row of the method table (`pipelines/methods.py`), each objective built by the row itself from the options a run of
general_distill.py gets by default (so a new method is benchmarked with no change here): `tinybert`
(embeddings, every hidden state and attention score map), `minilm` (attention + value relation) and `minilmv2`
(Q-Q/K-K/V-V relations of the last layers, 48 relation heads).
Random weights (speed does not depend on them), random token ids, no padding: tokens per step = batch x seq.

The table sets the achieved model FLOP/s beside this machine's own dense matmul rate in the same precision
(bench.common.matmul_flops_per_s, 2048^3 products), measured right before each timed step, in interleaved rounds
over the configs; pct_of_matmul ("MFU") is the median over rounds of (step FLOP/s) / (its paired matmul rate).
Model FLOPs per step, with N = batch x seq tokens, T = seq, P = weights of the nn.Linear layers of the encoder
layers that run (embeddings, LayerNorm, softmax, GELU, pooler, the loss terms' own small matmuls and the
optimizer update are not counted: a few percent of the FLOPs, though not of the time; MiniLMv2's relation
softmaxes over B x 48 x T x T are memory-bound: about 3 x 0.3 s of an 11 s fp32 step on a 2-core CPU),
h = hidden size, L = layers:

    teacher forward          F_t = N * (2 * P_t + 4 * L_t * T * h_t)          (QK^T and AV: 2 * 2 * T * h per token)
    student fwd + bwd        F_s = 3 * N * (2 * P_s + 4 * L_s * T * h_s)       (backward = 2 x forward)
    TinyBERT's fit_dense     F_w = 3 * N * 2 * P_w * (L_s + 1)                 (applied to L_s + 1 hidden states)
    step FLOPs = F_t + F_s (+ F_w);  MFU = step FLOPs / step seconds / matmul FLOP/s

MiniLM and MiniLMv2 read only the Q/K/V projections of the teacher's and the student's last layer and stop each
forward there (kdcore.attention_capture.SelfAttentionCapture.run): their last layer counts only its Q/K/V weights
in P and no attention term (L - 1 layers in 4 * L * T * h), i.e. the FLOPs the step needs, not those it skips.

Variants (--variants, before/after comparisons in one interleaved run): `current` is the toolkit as it is;
`unfused_kl` swaps MiniLM's chunked KL with analytic gradient (minilm.losses.pairwise_row_kl) for the unchunked
autograd reference (masked_row_kl over scaled_dot_logits), i.e. the loss as it was before it was chunked;
`full_forward` runs the teacher and the student to their last layer's output, as before the capture stopped
each forward at the Q/K/V it needs (MiniLM / MiniLMv2 only; the FLOPs counted stay the needed ones).

    python bench/bench_distill.py [--full | --smoke] [--sizes bench|demo] [--methods tinybert minilm minilmv2]
                                  [--precisions fp32 bf16] [--variants current unfused_kl full_forward]
                                  [--batch_size 32] [--seq_len 128] [--repeat N] [--out bench/results/distill.json]
"""
import contextlib
import os
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    apply_preset, bench_parser, bf16_is_native, machine_info, matmul_flops_per_s, median, print_table, report, timed)

from pipelines.methods import METHODS  # noqa: E402
from kdcore import distill  # noqa: E402
from kdcore.families import family_of, get_path  # noqa: E402
from kdcore.modeling import encoder_layers  # noqa: E402
from kdcore.objective import SelfAttentionObjective  # noqa: E402
from kdcore.runtime import set_seed  # noqa: E402
from kdcore.runtime import keep_freed_memory_for_reuse  # noqa: E402
from kdcore.trainer import build_optimizer  # noqa: E402

# name: (layers, hidden, heads, intermediate, vocab)
SIZES = {
    "bench": {"teacher": (12, 768, 12, 3072, 30522), "student": (6, 384, 12, 1536, 30522)},
    # the demo's pair, all-MiniLM-L6-v2 -> 3 x 384 (the shapes ../shared/perfpeer times against the original scripts)
    "demo": {"teacher": (6, 384, 12, 1536, 30522), "student": (3, 384, 12, 1536, 30522)},
    # smoke: tiny shapes that keep the methods' constraints (layers divide, equal heads, the default 48 relation
    # heads divide both hidden sizes)
    "smoke": {"teacher": (2, 96, 4, 192, 1000), "student": (1, 48, 4, 96, 1000)},
}
PRESETS = {  # repeat = timed steps per config (median), warmup = untimed steps per config
    "smoke": dict(repeat=1, warmup=1, batch_size=2, seq_len=16, matmul_n=128),
    "quick": dict(repeat=2, warmup=1, batch_size=32, seq_len=128, matmul_n=2048),
    "full": dict(repeat=5, warmup=2, batch_size=32, seq_len=128, matmul_n=2048),
}


def bert(layers, hidden, heads, intermediate, vocab, seq_len):
    from transformers import BertConfig, BertModel

    config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                        intermediate_size=intermediate, vocab_size=vocab, max_position_embeddings=max(512, seq_len))
    return BertModel(config)


def student_sizes(method: str, sizes: dict) -> tuple:
    """The student's (layers, hidden, heads, intermediate, vocab) for `method`: the teacher's width where the
    method compares hidden states directly (the embedding row), the bench's student otherwise."""
    if METHODS[method].needs_teacher_width:
        return (sizes["student"][0], *sizes["teacher"][1:])
    return sizes["student"]


def linear_weights(modules) -> int:
    return sum(m.weight.numel() for mod in modules for m in mod.modules() if isinstance(m, nn.Linear))


def needed_weights_and_attentions(model, stops_at_last_qkv: bool) -> tuple[int, int]:
    """(P, number of attention computations) of the encoder layers one step runs of `model`."""
    layers = list(encoder_layers(model))
    if not stops_at_last_qkv:
        return linear_weights(layers), len(layers)
    family = family_of(model.config)
    paths = [family.qkv] if family.fused() else list(family.qkv)
    return linear_weights(layers[:-1]) + linear_weights([get_path(layers[-1], p) for p in paths]), len(layers) - 1


def step_flops(objective, tokens: int, seq_len: int) -> float:
    """Model FLOPs of one step (formula in the module docstring)."""
    stops = isinstance(objective, SelfAttentionObjective)  # MiniLM v1 / v2: forwards end at the last Q/K/V
    (p_t, a_t), (p_s, a_s) = (needed_weights_and_attentions(m, stops) for m in (objective.teacher, objective.student))
    t_h, s_h = objective.teacher.config.hidden_size, objective.student.config.hidden_size
    s_layers = encoder_layers(objective.student)
    teacher = tokens * (2 * p_t + 4 * a_t * seq_len * t_h)
    student = 3 * tokens * (2 * p_s + 4 * a_s * seq_len * s_h)
    fit_dense = getattr(objective, "fit_dense", None)  # TinyBERT's hidden-state projection
    fit = 3 * tokens * 2 * fit_dense.weight.numel() * (len(s_layers) + 1) if fit_dense is not None else 0
    return float(teacher + student + fit)


def build_objective(method: str, teacher, sizes: dict, seq_len: int):
    """METHODS[method]'s objective over a new random student, from general_distill.py's default options."""
    args = distill.build_parser(METHODS).parse_args(
        ["--pregenerated_data", "-", "--teacher_model", "-", "--student_model", "-", "--output_dir", "-",
         "--distill_method", method])
    return METHODS[method].build(args, teacher, bert(*student_sizes(method, sizes), seq_len))


def unfused_pairwise_row_kl(teacher_a, teacher_b, student_a, student_b, attention_mask, max_chunk_elements=None):
    """The `unfused_kl` variant: the reference formula with autograd, every (B, H, T, T) tensor whole."""
    from minilm.losses import masked_row_kl, scaled_dot_logits

    return masked_row_kl(scaled_dot_logits(teacher_a, teacher_b, attention_mask),
                         scaled_dot_logits(student_a, student_b, attention_mask), attention_mask)


def variant_context(variant: str):
    """A context manager that puts the toolkit in the state `variant` names for the duration of one step."""
    if variant == "current":
        return contextlib.nullcontext()
    if variant == "unfused_kl":
        import minilm.losses
        from unittest import mock

        return mock.patch.object(minilm.losses, "pairwise_row_kl", unfused_pairwise_row_kl)
    if variant == "full_forward":
        from unittest import mock

        from kdcore.attention_capture import SelfAttentionCapture

        return mock.patch.object(SelfAttentionCapture, "run", lambda capture, **inputs: capture.model(**inputs))
    raise ValueError(f"unknown variant {variant!r}")


def make_step(objective, batch, amp_dtype, device, variant: str = "current"):
    """One optimizer step as kdcore.trainer.Trainer does it (AdamW without decay on 1-D weights, clip 1.0)."""
    args = SimpleNamespace(learning_rate=1e-4, weight_decay=0.01, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8)
    optimizer = build_optimizer(objective, args)
    params = [p for p in objective.parameters() if p.requires_grad]
    last = {}

    def step():
        ctx = torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
        start = time.perf_counter()
        with variant_context(variant):
            with ctx:
                losses = objective(**batch)
            forward_done = time.perf_counter()
            losses["loss"].backward()
        backward_done = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        last["loss"] = float(losses["loss"].detach())
        last["phases"] = {"forward": forward_done - start, "backward": backward_done - forward_done,
                          "optimizer": time.perf_counter() - backward_done}

    return step, last


def time_model_forwards(model: torch.nn.Module, name: str, seconds: dict) -> None:
    """Add the wall time of every forward of `model` to seconds[name] (also a forward a capture stops early)."""
    inner = model.forward

    def forward(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - start

    model.forward = forward  # an instance attribute: nn.Module.__call__ looks forward up on the instance


def phase_breakdown(steps: dict, repeat: int) -> list[dict]:
    """Where a step's time goes, per config: the teacher's forward, the student's forward, the rest of the
    objective's forward (the loss terms and what feeds them), backward, and the optimizer (clipping, AdamW,
    zero_grad); medians over `repeat` extra steps, run after the timed rounds (the forwards are wrapped by then)."""
    seconds, wrapped, rows = {}, set(), []
    for (method, prec, variant), (step, _, last, objective) in steps.items():
        for name, model in (("teacher", objective.teacher), ("student", objective.student)):
            if id(model) not in wrapped:  # the teacher is shared by every config
                time_model_forwards(model, name, seconds)
                wrapped.add(id(model))
        samples = []
        for _ in range(repeat):
            seconds.clear()
            step()
            p = last["phases"]
            teacher, student = seconds.get("teacher", 0.0), seconds.get("student", 0.0)
            samples.append({"teacher_fwd_s": teacher, "student_fwd_s": student,
                            "loss_s": p["forward"] - teacher - student, "backward_s": p["backward"],
                            "optimizer_s": p["optimizer"], "step_s": sum(p.values())})
        row = {"method": method, "precision": prec, "variant": variant}
        row.update({k: median([x[k] for x in samples]) for k in samples[0]})
        parts = ("teacher_fwd_s", "student_fwd_s", "loss_s", "backward_s", "optimizer_s")
        for k in parts:  # shares of the parts' sum (a median step need not equal the sum of median parts)
            row["pct_" + k[:-2]] = 100 * row[k] / sum(row[p] for p in parts)
        rows.append(row)
    return rows


def main(argv=None):
    p = bench_parser(__doc__, {"quick": "default: 1 warm-up + 2 timed steps per config, fp32 (+ bf16 where native)",
                               "full": "2 warm-up + 5 timed steps per config",
                               "smoke": "tiny models, 1 step (tests)"})
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), identifies=False)
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                   help="default: fp32, and bf16 where this machine runs bf16 matmuls natively (not emulated)",
                   identifies=False)
    p.add_argument("--variants", nargs="+", choices=["current", "unfused_kl", "full_forward"], default=["current"],
                   help="toolkit states to compare in the same interleaved rounds (module docstring)",
                   identifies=False)
    p.add_argument("--sizes", choices=[name for name in SIZES if name != "smoke"], default="bench",
                   help="model shapes: bench = 12x768 -> 6x384 (BERT-base shape), demo = 6x384 -> 3x384 (the "
                   "demo's all-MiniLM-L6-v2 pair); --smoke uses tiny ones", identifies=False)
    p.add_argument("--batch_size", type=int, default=None, identifies=False, range=">=1")
    p.add_argument("--seq_len", type=int, default=None, identifies=False, range=">=1")
    p.add_argument("--repeat", type=int, default=None, help="timed steps per config (interleaved rounds)",
                   identifies=False, range=">=1")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per config first",
                   identifies=False, range=">=0")
    p.add_argument("--matmul_n", type=int, default=None, help="size of the n x n x n yardstick matmul (2048)",
                   identifies=False, range=">=1")
    p.add_argument("--breakdown", action="store_true",
                   help="after the timed rounds, --repeat more steps per config split into teacher forward, student "
                   "forward, loss, backward and optimizer (phase_breakdown)", identifies=False)
    p.add_argument("--seed", type=int, default=0, identifies=False, range="[0,4294967295]")
    p.add_argument("--out", default=os.path.join("bench", "results", "distill.json"), identifies=False)
    args = p.parse_args(argv)
    preset = apply_preset(args, PRESETS)
    sizes = SIZES["smoke" if preset == "smoke" else args.sizes]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    set_seed(args.seed)
    if device.type == "cpu":
        keep_freed_memory_for_reuse()  # as the training runtime does (kdcore.runtime.Runtime)
    bf16_native, bf16_ratio = bf16_is_native(device)
    precision_note = None
    if args.precisions is None:  # the smoke preset always runs both paths (tiny shapes: the emulation costs nothing)
        args.precisions = ["fp32", "bf16"] if bf16_native or preset == "smoke" else ["fp32"]
        if "bf16" not in args.precisions:
            precision_note = (f"bf16 not timed: this machine's bf16 matmul runs at {bf16_ratio:.3f}x its fp32 rate "
                              "(emulated, no AVX512-BF16/AMX); --precisions fp32 bf16 times it anyway")
            print(precision_note, flush=True)

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
        flops = step_flops(objective, tokens, args.seq_len)
        for prec in args.precisions:
            for variant in args.variants:
                if variant in ("unfused_kl", "full_forward") and method == "tinybert":
                    continue  # TinyBERT has no KL term and needs every layer's output
                step, last = make_step(objective, batch, dtypes[prec], device, variant)
                steps[method, prec, variant] = (step, flops, last, objective)
    # Interleaved rounds (a, b, c, a, b, c, ...), and every step is paired with a yardstick matmul measured just
    # before it: a busy moment of a shared machine then hits a step and its yardstick alike.
    rounds = {key: [] for key in steps}
    for r in range(args.warmup + args.repeat):
        for (method, prec, variant), (step, _, _, _) in steps.items():
            rate = matmul_flops_per_s(device, dtypes[prec] or torch.float32, n=args.matmul_n, repeat=3)
            seconds = timed(step, repeat=1, warmup=0)
            if r >= args.warmup:
                rounds[method, prec, variant].append({"step_s": seconds, "matmul_GFLOP_s": rate / 1e9})

    rows = []
    for (method, prec, variant), (_, flops, last, _) in steps.items():
        rs = rounds[method, prec, variant]
        s = median([x["step_s"] for x in rs])
        rows.append({"method": method, "precision": prec, "variant": variant, "step_s": s, "tokens_per_s": tokens / s,
                     "model_GFLOP_per_step": flops / 1e9, "achieved_GFLOP_s": flops / s / 1e9,
                     "matmul_GFLOP_s": median([x["matmul_GFLOP_s"] for x in rs]),
                     "pct_of_matmul": median([100 * flops / x["step_s"] / 1e9 / x["matmul_GFLOP_s"] for x in rs]),
                     "loss": last["loss"], "rounds": rs})
    first = {(r["method"], r["precision"]): r["step_s"] for r in reversed(rows)}  # the first variant's step time
    for r in rows:
        r["time_vs_first_variant"] = r["step_s"] / first[r["method"], r["precision"]]
    t, s = sizes["teacher"], sizes["student"]
    title = (f"teacher {t[0]}x{t[1]} -> student {s[0]}x{s[1]}, batch {args.batch_size} x {args.seq_len} "
             f"({device.type}, {torch.get_num_threads()} threads)")
    breakdown = phase_breakdown(steps, args.repeat) if args.breakdown else None
    if breakdown:
        print_table(f"Where a step's time goes (%), {title}", breakdown,
                    ["method", "precision", *(["variant"] if len(args.variants) > 1 else []), "step_s",
                     "pct_teacher_fwd", "pct_student_fwd", "pct_loss", "pct_backward", "pct_optimizer"])
    report(f"General distillation step, teacher {t[0]}x{t[1]} -> student {s[0]}x{s[1]}, batch {args.batch_size} x "
           f"{args.seq_len} ({device.type}, {torch.get_num_threads()} threads)", rows,
           ["method", "precision", *(["variant", "time_vs_first_variant"] if len(args.variants) > 1 else []),
            "step_s", "tokens_per_s", "achieved_GFLOP_s", "matmul_GFLOP_s", "pct_of_matmul"],
           args.out,
           {"machine": machine_info(device), "preset": preset, "teacher": dict(zip(
               ["layers", "hidden", "heads", "intermediate", "vocab"], t)), "student": dict(zip(
               ["layers", "hidden", "heads", "intermediate", "vocab"], s)), "batch_size": args.batch_size,
            "seq_len": args.seq_len, "variants": args.variants, "repeat": args.repeat, "warmup": args.warmup,
            "matmul_n": args.matmul_n, "bf16_matmul_vs_fp32": bf16_ratio, "precision_note": precision_note,
            "breakdown": breakdown,
            "flops_formula": "teacher fwd N*(2*P_t + 4*L_t*T*h_t) + student fwd+bwd 3*N*(2*P_s + 4*L_s*T*h_s) "
                             "[+ tinybert fit_dense 3*N*2*P_w*(L_s+1)]; P = encoder nn.Linear weights"})


if __name__ == "__main__":
    main()
