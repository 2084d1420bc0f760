"""MiniLM v1 / v2 general-distillation objectives: nn.Modules whose forward(**batch) returns the loss terms.

`forward(input_ids, attention_mask, token_type_ids=None)` runs the frozen teacher (no grad) and the student with
forward hooks on the query/key/value projections of one layer each (`kdcore.modeling.SelfAttentionCapture`, so
both keep their SDPA attention) and returns {"loss": weighted sum, <term>: value, ...}; see `minilm.losses`.

* `minilm`   (MiniLM v1): teacher's and student's last layer; "attention" (Q-K attention distributions) and
  "value_relation" (V-V) terms; needs equal head counts.
* `minilmv2` (MiniLMv2): teacher layer `teacher_layer` (default last), student's last layer; "qq", "kk", "vv"
  relation terms over `num_relation_heads` relation heads.

The teacher is registered as `self.teacher` (frozen, eval mode) so the training runtime leaves it out of
checkpoints and gradient sync. Teacher layers above the distilled one are never used, so they are dropped.
"""
from __future__ import annotations

import torch
from torch import nn

from kdcore.cli import UserError
from kdcore.modeling import SelfAttentionCapture, encoder_layers, freeze

from .losses import (
    attention_distribution_kl,
    common_relation_head_counts,
    self_attention_relation_kl,
    value_relation_kl,
)

V1_TERMS = ("attention", "value_relation")
V2_TERMS = ("qq", "kk", "vv")


def resolve_teacher_layer(teacher_layer: int | None, num_layers: int, argname: str = "--teacher_layer") -> int:
    """1-based layer number as in the papers ("layer 21 of 24"), or negative from the end (-1 = last) -> 0-based."""
    if teacher_layer is None:
        return num_layers - 1
    if 1 <= teacher_layer <= num_layers:
        return teacher_layer - 1
    if -num_layers <= teacher_layer <= -1:
        return num_layers + teacher_layer
    raise UserError(f"{argname} {teacher_layer}: the teacher has layers 1..{num_layers} (or -1 for the last)")


class MiniLMObjective(nn.Module):
    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        method: str = "minilmv2",
        teacher_layer: int | None = None,
        num_relation_heads: int = 48,
        weights: dict[str, float] | None = None,
    ):
        super().__init__()
        if method not in ("minilm", "minilmv2"):
            raise ValueError(f"unknown MiniLM method {method!r}")
        self.method = method
        self.teacher = freeze(teacher)  # eval mode, no gradients, never in the optimizer
        self.student = student
        t_layers, s_layers = encoder_layers(teacher), encoder_layers(student)
        self.student_layer = len(s_layers) - 1
        if method == "minilm":
            self.teacher_layer = resolve_teacher_layer(teacher_layer, len(t_layers))
            t_heads, s_heads = teacher.config.num_attention_heads, student.config.num_attention_heads
            if t_heads != s_heads:
                raise UserError(
                    f"--distill_method minilm needs equal attention head counts, but the teacher has {t_heads} and the "
                    f"student {s_heads}; use --distill_method minilmv2 (its relation heads work with any head count)"
                )
            self.terms = V1_TERMS
        else:
            self.teacher_layer = resolve_teacher_layer(teacher_layer, len(t_layers))
            t_dim, s_dim = teacher.config.hidden_size, student.config.hidden_size
            if num_relation_heads <= 0 or t_dim % num_relation_heads or s_dim % num_relation_heads:
                options = ", ".join(str(r) for r in common_relation_head_counts(t_dim, s_dim))
                raise UserError(
                    f"--num_relation_heads {num_relation_heads} must divide both hidden sizes (teacher {t_dim}, "
                    f"student {s_dim}); values that do: {options}"
                )
            self.num_relation_heads = num_relation_heads
            self.terms = V2_TERMS
        self.weights = {term: 1.0 for term in self.terms}
        for term, w in (weights or {}).items():
            if term not in self.weights:
                raise ValueError(f"no loss term {term!r} in {method} (terms: {', '.join(self.terms)})")
            self.weights[term] = float(w)
        # Layers above the distilled teacher layer are never read: drop them (less compute, less memory).
        del t_layers[self.teacher_layer + 1:]
        self.parts = ("query", "key", "value")
        # Parameters no loss term reaches are frozen, so the optimizer leaves them alone and DDP does not wait for
        # their gradients: the student's pooler and, in its last layer, everything after the Q/K/V projections.
        last = encoder_layers(student)[self.student_layer]
        for module in (getattr(student, "pooler", None), last.attention.output, last.intermediate, last.output):
            if module is not None:
                freeze(module)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never runs dropout
        return self

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        with torch.no_grad(), SelfAttentionCapture(self.teacher, [self.teacher_layer], self.parts) as t_cap:
            self.teacher(**inputs)
        with SelfAttentionCapture(self.student, [self.student_layer], self.parts) as s_cap:
            self.student(**inputs)
        t, s = t_cap[self.teacher_layer], s_cap[self.student_layer]
        if self.method == "minilm":
            values = {
                "attention": attention_distribution_kl(t.query, t.key, s.query, s.key, attention_mask),
                "value_relation": value_relation_kl(t.value, s.value, attention_mask),
            }
        else:
            r = self.num_relation_heads
            values = {
                "qq": self_attention_relation_kl(t.query, s.query, attention_mask, r),
                "kk": self_attention_relation_kl(t.key, s.key, attention_mask, r),
                "vv": self_attention_relation_kl(t.value, s.value, attention_mask, r),
            }
        loss = sum(self.weights[k] * v for k, v in values.items())
        return {"loss": loss, **values}
