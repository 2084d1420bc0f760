"""The teacher contract every distillation objective shares.

    class MyObjective(DistillObjective):
        TERMS = ("a", "b")
        def __init__(self, teacher, student):
            super().__init__(teacher, student)          # freezes the teacher, keeps it out of the module tree
            self.freeze_unreached(student.pooler)         # parameters no loss term reaches
        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return {"loss": ..., "a": ..., "b": ...}

The teacher is held *beside* the module tree, not in it: it is not in `parameters()` or `state_dict()`, so the
optimizer, DDP's gradient sync and every checkpoint leave it out by construction, and `objective.train()` never
switches it out of eval mode (no dropout). `objective.to(device)` still moves it. Trainable modules that are not
part of the student (TinyBERT's `fit_dense`) are listed by `extra_modules()` and saved beside the student.
"""
from __future__ import annotations

import os

import torch
from safetensors.torch import load_file
from torch import nn

from .batching import encoder_inputs
from .errors import UserError
from .families import family_of, get_path
from .attention_capture import SelfAttentionCapture
from .modeling import bare_model, encoder_layers, freeze, save_model


class DistillObjective(nn.Module):
    """A trainable `student`, a frozen `teacher` and optional trainable extras; forward(**batch) returns
    {"loss": scalar to back-propagate, <term>: scalar, ...} with one entry per name in `TERMS`."""

    TERMS: tuple[str, ...] = ()

    def __init__(self, teacher: nn.Module, student: nn.Module):
        super().__init__()
        self.student = student
        # object.__setattr__ bypasses nn.Module's registration: see the module docstring.
        object.__setattr__(self, "_teacher", freeze(teacher))

    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    def _apply(self, fn, recurse: bool = True):
        # .to() / .cuda() / .half() reach the teacher too, although it is not a registered submodule.
        self._teacher._apply(fn, recurse)
        return super()._apply(fn, recurse)

    @staticmethod
    def freeze_unreached(*modules: nn.Module | None) -> None:
        """Freeze modules no loss term reaches, so the optimizer leaves them alone and DDP does not wait for
        their gradients (it would stall on parameters that never get one)."""
        for module in modules:
            if module is not None:
                freeze(module)

    def drop_teacher_layers_above(self, layer: int) -> None:
        """Teacher layers above `layer` (0-based) are never read: drop them (less compute, less memory)."""
        del encoder_layers(self.teacher)[layer + 1:]

    def extra_modules(self) -> dict[str, nn.Module]:
        """Trainable modules outside the student, saved beside it as `<name>.safetensors`."""
        return {}

    def load_extras(self, folder: str | None) -> list[str]:
        """Load each extra saved beside a student folder (`<name>.safetensors`, as `save` writes them), so a run that
        continues from that folder continues them too; returns the names loaded (none when the folder has none)."""
        loaded = []
        for name, module in self.extra_modules().items():
            path = os.path.join(folder, f"{name}.safetensors") if folder and os.path.isdir(folder) else None
            if path is None or not os.path.isfile(path):
                continue
            try:
                module.load_state_dict(load_file(path))
            except RuntimeError as err:
                raise UserError(f"{path}: does not fit this teacher/student pair ({err})")
            loaded.append(name)
        return loaded

    def save(self, folder: str, tokenizer=None) -> None:
        """The student as a `save_pretrained` folder (AutoModel loads it with no missing keys), extras beside it."""
        save_model(self.student, folder, tokenizer, extra_modules=self.extra_modules() or None)


def resolve_teacher_layer(teacher_layer: int | None, num_layers: int, argname: str = "--teacher_layer") -> int:
    """1-based layer number as in the papers ("layer 21 of 24"), or negative from the end (-1 = last) -> 0-based."""
    if teacher_layer is None:
        return num_layers - 1
    if 1 <= teacher_layer <= num_layers:
        return teacher_layer - 1
    if -num_layers <= teacher_layer <= -1:
        return num_layers + teacher_layer
    raise UserError(f"{argname} {teacher_layer}: the teacher has layers 1..{num_layers} (or -1 for the last)")


class SelfAttentionObjective(DistillObjective):
    """Base of objectives on the Q/K/V projections of one teacher layer and of the student's last layer
    (MiniLM v1 and v2). Teacher layers above the distilled one are dropped; in the student, only the Q/K/V
    projections of the last layer (and what is below) are reached, so what runs after them (in that layer, and
    the pooler / final norm) is frozen; the model-family table (kdcore.families) says which modules those are."""

    def __init__(self, teacher: nn.Module, student: nn.Module, teacher_layer: int | None = None):
        super().__init__(teacher, student)
        self.teacher_layer = resolve_teacher_layer(teacher_layer, len(encoder_layers(teacher)))
        self.student_layer = len(encoder_layers(student)) - 1
        self.drop_teacher_layers_above(self.teacher_layer)
        family = family_of(student.config)
        last = encoder_layers(student)[self.student_layer]
        base = bare_model(student)
        self.freeze_unreached(*(get_path(last, path) for path in family.after_qkv),
                              *(getattr(base, name, None) for name in family.after_layers))

    def capture_qkv(self, input_ids, attention_mask, token_type_ids=None):
        """Per-head (B, H, T, d) query/key/value of the teacher layer (no grad) and of the student's last layer."""
        inputs = encoder_inputs(input_ids, attention_mask, token_type_ids)
        parts = ("query", "key", "value")
        # Each forward stops at its layer's projections: nothing after them reaches a loss.
        with torch.no_grad(), SelfAttentionCapture(self.teacher, [self.teacher_layer], parts) as t_cap:
            t_cap.run(**inputs)
        with SelfAttentionCapture(self.student, [self.student_layer], parts) as s_cap:
            s_cap.run(**inputs)
        return t_cap[self.teacher_layer], s_cap[self.student_layer]


def weighted_loss(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> dict[str, torch.Tensor]:
    """{"loss": sum_k w_k * L_k, **terms}."""
    return {"loss": sum(weights[k] * v for k, v in terms.items()), **terms}


def term_weights(terms: tuple[str, ...], given: dict[str, float] | None, method: str) -> dict[str, float]:
    """Weight 1.0 for every term, overridden by `given` (which may name only terms of `method`)."""
    weights = {term: 1.0 for term in terms}
    for term, w in (given or {}).items():
        if term not in weights:
            raise ValueError(f"no loss term {term!r} in {method} (terms: {', '.join(terms)})")
        weights[term] = float(w)
    return weights
