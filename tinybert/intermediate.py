"""TinyBERT's intermediate-layer distillation objective (general distillation; also task distillation stage 1).

    L = L_emb + L_hidden + L_att
    L_emb    = hidden_mse(W e^S, e^T)                                         embedding outputs
    L_hidden = sum_{i=1..M} hidden_mse(W h^S_i, h^T_{g(i)})                   g(i) = i * k, k = N_T / M (*)
    L_att    = sum_{i=1..M} attention_score_mse(A^S_i, A^T_{g(i)})            raw scores QK^T / sqrt(d_k)

(*) when the depths do not divide, g is the nearest uniform map with the top layer kept (6 -> 4: 2, 3, 5, 6), or
an explicit `--layer_map` (`kdcore.student_init.uniform_layer_map`).
W is `fit_dense`, one trainable nn.Linear(student hidden, teacher hidden) shared by all layers (as in TinyBERT),
sized from the two configs. Sums over layers as in the original. The formulas of each term are in
`tinybert.losses`. Attention scores are rebuilt from the query/key projections captured by forward hooks, so both
models keep their SDPA attention.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from kdcore.cli import UserError
from kdcore.modeling import SelfAttentionCapture, attention_scores, encoder_layers, freeze

from kdcore.student_init import parse_layer_list

from .losses import attention_score_mse, hidden_mse

logger = logging.getLogger("kd")
TERMS = ("embedding", "hidden", "attention")


class TinyBertIntermediateObjective(nn.Module):
    def __init__(self, teacher: nn.Module, student: nn.Module, layer_map: str | None = None):
        super().__init__()
        self.teacher = freeze(teacher)  # eval mode, no gradients, never in the optimizer
        self.student = student
        # student layer i <- teacher_layers[i] (0-based)
        self.teacher_layers = check_layer_compatibility(teacher, student, layer_map)
        self.fit_dense = new_fit_dense(student.config, teacher.config)
        if getattr(student, "pooler", None) is not None:
            freeze(student.pooler)  # no loss term reaches it: keep it out of the optimizer and of DDP's gradient sync

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def load_fit_dense(self, folder: str) -> bool:
        """Load `fit_dense.safetensors` saved beside a student (for --continue_train); False if there is none."""
        return load_fit_dense(self.fit_dense, folder)

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return intermediate_layer_losses(self.teacher, self.student, self.fit_dense, self.teacher_layers,
                                         input_ids, attention_mask, token_type_ids)


def new_fit_dense(student_config, teacher_config) -> nn.Linear:
    """TinyBERT's `fit_dense` W (student width -> teacher width), initialised as BERT initialises its linears."""
    fit_dense = nn.Linear(student_config.hidden_size, teacher_config.hidden_size)
    fit_dense.weight.data.normal_(mean=0.0, std=getattr(student_config, "initializer_range", 0.02))
    fit_dense.bias.data.zero_()
    return fit_dense


def load_fit_dense(fit_dense: nn.Linear, folder: str) -> bool:
    """Load `fit_dense.safetensors` saved beside a student folder into `fit_dense`; False if there is none."""
    path = os.path.join(folder, "fit_dense.safetensors") if folder and os.path.isdir(folder) else None
    if path is None or not os.path.isfile(path):
        return False
    from safetensors.torch import load_file

    try:
        fit_dense.load_state_dict(load_file(path))
    except RuntimeError as err:
        raise UserError(f"{path}: does not fit this teacher/student pair ({err})")
    return True


def check_layer_compatibility(teacher: nn.Module, student: nn.Module, layer_map: str | None = None) -> list[int]:
    """TinyBERT's preconditions; returns the teacher layer (0-based) that each student layer learns from.

    `layer_map` is "2,4,6"-style (1-based teacher layers, one per student layer); None: `layer_mapping`.
    """
    n_t, n_s = len(encoder_layers(teacher)), len(encoder_layers(student))
    t_heads, s_heads = teacher.config.num_attention_heads, student.config.num_attention_heads
    if t_heads != s_heads:
        raise UserError(
            f"--student_model: TinyBERT's attention loss needs equal head counts (teacher {t_heads}, student "
            f"{s_heads}); change num_attention_heads or use --distill_method minilmv2"
        )
    layers = parse_layer_list(layer_map, n_s, n_t, "--layer_map")
    logger.info("TinyBERT layer map (1-based): %s", ", ".join(f"student {i + 1} <- teacher {t}"
                                                             for i, t in enumerate(layers)))
    return [t - 1 for t in layers]


def intermediate_layer_losses(teacher, student, fit_dense, teacher_layers, input_ids, attention_mask,
                              token_type_ids=None) -> dict[str, torch.Tensor]:
    """{"loss": L_emb + L_hidden + L_att, "embedding", "hidden", "attention"} for one batch (see module docstring).

    `teacher` and `student` are bare encoders (pass `model.base_model` for models with a task head).
    """
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "output_hidden_states": True}
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    parts = ("query", "key")
    student_layers = list(range(len(teacher_layers)))
    with torch.no_grad(), SelfAttentionCapture(teacher, teacher_layers, parts) as t_cap:
        t_hidden = teacher(**inputs).hidden_states
    with SelfAttentionCapture(student, student_layers, parts) as s_cap:
        s_hidden = student(**inputs).hidden_states
    embedding = hidden_mse(fit_dense(s_hidden[0]), t_hidden[0], attention_mask)
    # hidden_states[0] is the embedding output, so layer l's output is hidden_states[l + 1]
    hidden = sum(
        hidden_mse(fit_dense(s_hidden[s + 1]), t_hidden[t + 1], attention_mask)
        for s, t in zip(student_layers, teacher_layers)
    )
    attention = sum(
        attention_score_mse(
            attention_scores(s_cap[s].query, s_cap[s].key, attention_mask),
            attention_scores(t_cap[t].query, t_cap[t].key, attention_mask),
            attention_mask,
        )
        for s, t in zip(student_layers, teacher_layers)
    )
    return {"loss": embedding + hidden + attention, "embedding": embedding, "hidden": hidden, "attention": attention}
