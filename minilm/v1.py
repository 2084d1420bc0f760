"""MiniLM v1 (Wang et al., 2020): deep self-attention distillation of one teacher layer into the student's last.

    L = w_att * L_att + w_vr * L_vr
    L_att = KL(softmax(Q_t K_t^T / sqrt(d_k)) || softmax(Q_s K_s^T / sqrt(d_k)))    per head (attention distributions)
    L_vr  = KL(softmax(V_t V_t^T / sqrt(d_k)) || softmax(V_s V_s^T / sqrt(d_k)))    per head (value relations)

averaged over heads and real query positions (formulas and masking in `minilm.losses`). The teacher's and the
student's head counts must be equal (MiniLMv2's relation heads lift that). Q/K/V come from forward hooks on one
layer each (`kdcore.objective.SelfAttentionObjective`), so both models keep their SDPA attention.
"""
from __future__ import annotations

from kdcore.cli import UserError
from kdcore.distill import TEACHER_LAYER, DistillMethod, option
from kdcore.families import require_qk_attention
from kdcore.objective import SelfAttentionObjective, term_weights, weighted_loss

from .losses import attention_distribution_kl, value_relation_kl


class MiniLMv1Objective(SelfAttentionObjective):
    TERMS = ("attention", "value_relation")

    def __init__(self, teacher, student, teacher_layer: int | None = None, weights: dict[str, float] | None = None):
        for model in (teacher, student):
            require_qk_attention(model.config, "minilm")
        super().__init__(teacher, student, teacher_layer)
        t_heads, s_heads = teacher.config.num_attention_heads, student.config.num_attention_heads
        if t_heads != s_heads:
            raise UserError(
                f"--distill_method minilm needs equal attention head counts, but the teacher has {t_heads} and the "
                f"student {s_heads}; use --distill_method minilmv2 (its relation heads work with any head count)"
            )
        self.weights = term_weights(self.TERMS, weights, "minilm")

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        # `labels` (task distillation batches carry them) are not used by these losses.
        t, s = self.capture_qkv(input_ids, attention_mask, token_type_ids)
        return weighted_loss({
            "attention": attention_distribution_kl(t.query, t.key, s.query, s.key, attention_mask),
            "value_relation": value_relation_kl(t.value, s.value, attention_mask),
        }, self.weights)


METHOD = DistillMethod(
    name="minilm",
    summary="MiniLM v1: last-layer attention distributions + value relations (equal head counts)",
    options=(
        TEACHER_LAYER,
        option("--attention_weight", type=float, default=1.0, help="Weight of the attention term.",
               identifies=True, range=">=0"),
        option("--value_relation_weight", type=float, default=1.0, help="Weight of the value-relation term.",
               identifies=True, range=">=0"),
    ),
    build=lambda args, teacher, student: MiniLMv1Objective(
        teacher, student, teacher_layer=args.teacher_layer,
        weights={"attention": args.attention_weight, "value_relation": args.value_relation_weight}),
)
