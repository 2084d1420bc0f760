"""TinyBERT's intermediate-layer distillation objective (general distillation; also task distillation stage 1).

    L = L_emb + L_hidden + L_att
    L_emb    = hidden_mse(W e^S, e^T)                                         embedding outputs
    L_hidden = sum_{i=1..M} hidden_mse(W h^S_i, h^T_{g(i)})                   g(i) = i * k, k = N_T / M (*)
    L_att    = sum_{i=1..M} attention_score_mse(A^S_i, A^T_{g(i)})            raw scores QK^T / sqrt(d_k)

(*) when the depths do not divide, g is the nearest uniform map with the top layer kept (6 -> 4: 2, 3, 5, 6), or
an explicit `--layer_map` (`kdcore.student_init.uniform_layer_map`).
W is `fit_dense`, one trainable nn.Linear(student hidden, teacher hidden) shared by all layers (as in TinyBERT),
sized from the two configs. Sums over layers as in the original. The formulas of each term are in
`tinybert.losses`; `reduction="original"` (`--loss_reduction original`) uses TinyBERT's means over every padded
position instead (`hidden_mse_original`, `attention_score_mse_original`). Attention scores are rebuilt from the
query/key projections captured by forward hooks, so both models keep their SDPA attention.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from kdcore.attention_capture import SelfAttentionCapture
from kdcore.batching import encoder_inputs
from kdcore.cli import UserError
from kdcore.distill import DistillMethod, option
from kdcore.families import require_qk_attention
from kdcore.student_init import layer_numbers, parse_layer_list
from kdcore.modeling import encoder_layers
from kdcore.objective import DistillObjective


from .losses import attention_score_mse_from_qk, hidden_mse, hidden_mse_original

logger = logging.getLogger("kd")

LOSS_REDUCTIONS = ("real_tokens", "original")  # the toolkit's default, TinyBERT's code
# One definition for general distillation (a tinybert method option) and task distillation (task_distill.py).
LOSS_REDUCTION = option(
    "--loss_reduction", choices=list(LOSS_REDUCTIONS), default="real_tokens",
    help="TinyBERT losses: means over real tokens only (default, unchanged by padding), or 'original': TinyBERT's "
    "code, means over every padded position (the loss shrinks as padding grows) and, in task distillation stage 2, "
    "a soft cross-entropy averaged over classes too", identifies=True)


class TinyBertIntermediateObjective(DistillObjective):
    """The intermediate-layer objective for a bare encoder pair (general distillation) or a pair with task heads
    (task distillation stage 1: the losses read the encoders, `student.base_model`, and the heads are frozen).
    `layer_map`: "2,3,5,6"-style teacher layers (1-based) per student layer; default the uniform map."""

    TERMS = ("embedding", "hidden", "attention")

    def __init__(self, teacher: nn.Module, student: nn.Module, reduction: str = "real_tokens",
                 layer_map: str | None = None):
        if reduction not in LOSS_REDUCTIONS:
            raise ValueError(f"unknown loss reduction {reduction!r}; expected one of {LOSS_REDUCTIONS}")
        for model in (teacher, student):
            require_qk_attention(model.config, "tinybert")
        super().__init__(teacher, student)
        self.reduction = reduction  # "real_tokens" (the toolkit's) or "original" (TinyBERT's code)
        # student layer i <- teacher_layers[i] (0-based)
        self.teacher_layers = check_layer_compatibility(teacher.base_model, student.base_model, layer_map)
        self.fit_dense = build_fit_dense(student.config, teacher.config)
        # No loss term reaches the pooler or a task head: keep them out of the optimizer and of DDP's gradient sync.
        base = student.base_model
        heads = [] if base is student else [m for m in student.children() if m is not base]
        self.freeze_unreached(getattr(base, "pooler", None), *heads)

    def extra_modules(self) -> dict[str, nn.Module]:
        return {"fit_dense": self.fit_dense}

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None):
        # `labels` (task distillation batches carry them) are not used by these losses.
        return intermediate_layer_losses(self.teacher.base_model, self.student.base_model, self.fit_dense,
                                         self.teacher_layers, input_ids, attention_mask, token_type_ids,
                                         reduction=self.reduction)


def build_fit_dense(student_config, teacher_config) -> nn.Linear:
    """W: student width -> teacher width, initialised as BERT initialises a linear layer (as TinyBERT's
    init_bert_weights did for fit_dense): weights N(0, initializer_range), bias 0.

    A student that starts from the teacher's own layers (config `student_init` names teacher layers) at the
    teacher's width already speaks in the teacher's hidden space: W starts as the identity there, so the first
    steps refine that start instead of pulling it towards a random projection."""
    fit_dense = nn.Linear(student_config.hidden_size, teacher_config.hidden_size)
    from_teacher = bool((getattr(student_config, "student_init", None) or {}).get("layers"))
    if from_teacher and student_config.hidden_size == teacher_config.hidden_size:
        nn.init.eye_(fit_dense.weight)
    else:
        fit_dense.weight.data.normal_(mean=0.0, std=getattr(student_config, "initializer_range", 0.02))
    fit_dense.bias.data.zero_()
    return fit_dense


LAYER_MAP = option(
    "--layer_map", default=None, type=layer_numbers,
    help="Teacher layer (1-based) for each student layer, e.g. 2,3,5,6; default: uniform with the top layer kept "
    "(the nearest uniform map when the depths do not divide).", identifies=True)


def build_objective(args, teacher, student) -> TinyBertIntermediateObjective:
    return TinyBertIntermediateObjective(teacher, student, reduction=args.loss_reduction, layer_map=args.layer_map)


METHOD = DistillMethod(
    name="tinybert",
    summary="embedding + hidden-state MSE (through fit_dense) + attention-score MSE on mapped layers (TinyBERT's "
    "general distillation; the default)",
    options=(LOSS_REDUCTION, LAYER_MAP),
    build=build_objective,
)


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
                              token_type_ids=None, reduction: str = "real_tokens") -> dict[str, torch.Tensor]:
    """{"loss": L_emb + L_hidden + L_att, "embedding", "hidden", "attention"} for one batch (see module docstring).

    `teacher` and `student` are bare encoders (pass `model.base_model` for models with a task head).
    `reduction`: "real_tokens" (means over real tokens only) or "original" (TinyBERT's means over all positions).
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown loss reduction {reduction!r}; expected one of {LOSS_REDUCTIONS}")
    if reduction == "original":
        hidden_loss = hidden_mse_original
    else:
        hidden_loss = lambda s, t: hidden_mse(s, t, attention_mask)  # noqa: E731
    inputs = encoder_inputs(input_ids, attention_mask, token_type_ids, output_hidden_states=True)
    parts = ("query", "key")
    student_layers = list(range(len(teacher_layers)))
    with torch.no_grad(), SelfAttentionCapture(teacher, teacher_layers, parts) as t_cap:
        t_hidden = teacher(**inputs).hidden_states
    with SelfAttentionCapture(student, student_layers, parts) as s_cap:
        s_hidden = student(**inputs).hidden_states
    embedding = hidden_loss(fit_dense(s_hidden[0]), t_hidden[0])
    # hidden_states[0] is the embedding output, so layer l's output is hidden_states[l + 1]
    hidden = sum(hidden_loss(fit_dense(s_hidden[s + 1]), t_hidden[t + 1]) for s, t in zip(student_layers, teacher_layers))
    # the score MSE straight from Q and K: no (B, H, T, T) map is formed or kept for backward
    attention = sum(attention_score_mse_from_qk(s_cap[s].query, s_cap[s].key, t_cap[t].query, t_cap[t].key,
                                                attention_mask, reduction)
                    for s, t in zip(student_layers, teacher_layers))
    return {"loss": embedding + hidden + attention, "embedding": embedding, "hidden": hidden, "attention": attention}
