"""MiniLMv2 (Wang et al., 2021): multi-head self-attention relation distillation.

    L = w_qq * L_QQ + w_kk * L_KK + w_vv * L_VV
    L_AA = KL(softmax(A_t A_t^T / sqrt(d_r)) || softmax(A_s A_s^T / sqrt(d_r)))    A in {Q, K, V}, per relation head

Q, K, V of one teacher layer (`--teacher_layer`, default the last) and of the student's last layer are
concatenated over heads and re-split into `--num_relation_heads` relation heads of size d_r, so the teacher and
the student may have any head counts (formulas and masking in `minilm.losses`). Q/K/V come from forward hooks
(`kdcore.objective.SelfAttentionObjective`), so both models keep their SDPA attention.
"""
from __future__ import annotations

from kdcore.cli import UserError
from kdcore.distill import TEACHER_LAYER, DistillMethod, option
from kdcore.objective import SelfAttentionObjective, term_weights, weighted_loss

from .losses import common_relation_head_counts, self_attention_relation_kl


class MiniLMv2Objective(SelfAttentionObjective):
    TERMS = ("qq", "kk", "vv")

    def __init__(self, teacher, student, teacher_layer: int | None = None, num_relation_heads: int = 48,
                 weights: dict[str, float] | None = None):
        super().__init__(teacher, student, teacher_layer)
        t_dim, s_dim = teacher.config.hidden_size, student.config.hidden_size
        if num_relation_heads <= 0 or t_dim % num_relation_heads or s_dim % num_relation_heads:
            options = ", ".join(str(r) for r in common_relation_head_counts(t_dim, s_dim))
            raise UserError(
                f"--num_relation_heads {num_relation_heads} must divide both hidden sizes (teacher {t_dim}, "
                f"student {s_dim}); values that do: {options}"
            )
        self.num_relation_heads = num_relation_heads
        self.weights = term_weights(self.TERMS, weights, "minilmv2")

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        # `labels` (task distillation batches carry them) are not used by these losses.
        t, s = self.capture_qkv(input_ids, attention_mask, token_type_ids)
        r = self.num_relation_heads
        return weighted_loss({
            "qq": self_attention_relation_kl(t.query, s.query, attention_mask, r),
            "kk": self_attention_relation_kl(t.key, s.key, attention_mask, r),
            "vv": self_attention_relation_kl(t.value, s.value, attention_mask, r),
        }, self.weights)


NUM_RELATION_HEADS = option(
    "--num_relation_heads", type=int, default=48,
    help="Relation heads; must divide both hidden sizes (48 for base teachers, 64 for large).",
    identifies=True, range=">=1")

METHOD = DistillMethod(
    name="minilmv2",
    summary="MiniLMv2: Q-Q / K-K / V-V self-attention relations over --num_relation_heads",
    options=(
        TEACHER_LAYER,
        NUM_RELATION_HEADS,
        option("--qq_weight", type=float, default=1.0, help="Weight of the Q-Q relation term.",
               identifies=True, range=">=0"),
        option("--kk_weight", type=float, default=1.0, help="Weight of the K-K relation term.",
               identifies=True, range=">=0"),
        option("--vv_weight", type=float, default=1.0, help="Weight of the V-V relation term.",
               identifies=True, range=">=0"),
    ),
    build=lambda args, teacher, student: MiniLMv2Objective(
        teacher, student, teacher_layer=args.teacher_layer, num_relation_heads=args.num_relation_heads,
        weights={"qq": args.qq_weight, "kk": args.kk_weight, "vv": args.vv_weight}),
)
