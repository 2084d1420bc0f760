"""Where a student's layers come from: layer maps, and initialisation from the teacher's own layers.

* `uniform_layer_map(n_student, n_teacher)` – student layer i (1-based) <- teacher layer round(i * N_t / N_s).
  Spread uniformly with the top layer kept; for depths that divide it is TinyBERT's map i * k. One function serves
  both TinyBERT's layer-to-layer losses and the choice of the teacher layers a student is initialised from.
* `parse_layer_list` – "2,4,6" (1-based, as users count layers) -> [2, 4, 6], with one-line errors.
* `init_from_teacher_layers(student, teacher, layers)` – copy the teacher's embeddings, the chosen layers and what
  else the encoder holds outside its blocks (pooler / final norm) into the student (a "student initialised from the teacher", as DistilBERT does), and record where the
  weights came from in `student.config.student_init`, so the saved config.json says so.

Why: copying half of a fine-tuned-ready teacher's layers is a far better start for a small student than random
weights; every distillation stage can start from it (`--student_init teacher_layers [--init_layers 2,4,6]`).
"""
from __future__ import annotations

import logging
import math

import torch
from torch import nn

from .errors import UserError
from .modeling import encoder_layers

logger = logging.getLogger("kd")

INIT_CHOICES = ("random", "teacher_layers")


def uniform_layer_map(num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """Student layer i = 1..N_s takes teacher layer floor(i * N_t / N_s + 1/2) (1-based; the top layer maps to the top).

    N_t = 6, N_s = 3 -> [2, 4, 6];  N_t = 12, N_s = 4 -> [3, 6, 9, 12];  N_t = 6, N_s = 4 -> [2, 3, 5, 6].
    """
    if num_student_layers < 1 or num_teacher_layers < 1:
        raise UserError(f"layer map: depths must be positive (student {num_student_layers}, teacher {num_teacher_layers})")
    if num_student_layers > num_teacher_layers:
        raise UserError(f"layer map: the student ({num_student_layers} layers) is deeper than the teacher "
                        f"({num_teacher_layers}); give the map explicitly")
    return [math.floor(i * num_teacher_layers / num_student_layers + 0.5) for i in range(1, num_student_layers + 1)]


def layer_numbers(text: str) -> str:
    """argparse type of --init_layers / --layer_map: comma-separated positive layer numbers, checked while parsing
    (whether each exists is checked against the teacher later). The text itself is kept."""
    import argparse

    parts = str(text).replace(" ", "").split(",")
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated layer numbers from 1, e.g. 2,4,6; got {text!r}")
    return text


def parse_layer_list(text: str | None, num_student_layers: int, num_teacher_layers: int, argname: str) -> list[int]:
    """"2,4,6" -> [2, 4, 6]: one teacher layer (1-based) per student layer, each in 1..N_t. None -> the uniform map."""
    if text is None or str(text).strip() == "":
        return uniform_layer_map(num_student_layers, num_teacher_layers)
    try:
        layers = [int(x) for x in str(text).replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise UserError(f"{argname} {text!r}: expected comma-separated layer numbers, e.g. 2,4,6")
    if len(layers) != num_student_layers:
        raise UserError(f"{argname} {text}: {len(layers)} layers given, the student has {num_student_layers}")
    bad = [x for x in layers if not 1 <= x <= num_teacher_layers]
    if bad:
        raise UserError(f"{argname} {text}: layer {bad[0]} does not exist; the teacher has layers 1..{num_teacher_layers}")
    return layers


def _base(model: nn.Module) -> nn.Module:
    """The encoder without DDP wrapper or task head."""
    model = getattr(model, "module", model)
    return getattr(model, "base_model", model)


def init_from_teacher_layers(student: nn.Module, teacher: nn.Module, layers: list[int] | None = None,
                             teacher_name: str | None = None, argname: str = "--student_init") -> list[int]:
    """Copy the teacher's embeddings, layers `layers` (1-based; default `uniform_layer_map`) and pooler into the
    student, in place. A task head (e.g. a classifier) is copied too when both models have one of the same shape.
    Returns the layers used; records {"from", "layers"} in `student.config.student_init`.
    """
    s_base, t_base = _base(student), _base(teacher)
    s_cfg, t_cfg = s_base.config, t_base.config
    for field in ("hidden_size", "intermediate_size", "num_attention_heads"):
        s_val, t_val = getattr(s_cfg, field), getattr(t_cfg, field)
        if s_val != t_val:
            raise UserError(
                f"{argname} teacher_layers: the student's {field} {s_val} differs from the teacher's {t_val}, so the "
                f"teacher's layers do not fit; use the teacher's {field} or start from random (--student_init random)")
    s_blocks, t_blocks = encoder_layers(s_base), encoder_layers(t_base)
    if layers is None:
        layers = uniform_layer_map(len(s_blocks), len(t_blocks))
    if len(layers) != len(s_blocks) or not all(1 <= x <= len(t_blocks) for x in layers):
        raise UserError(f"--init_layers {','.join(map(str, layers))}: need {len(s_blocks)} layers within "
                        f"1..{len(t_blocks)}")
    with torch.no_grad():
        for s_block, t_layer in zip(s_blocks, layers):
            s_block.load_state_dict(t_blocks[t_layer - 1].state_dict())
        # Everything of the encoder outside its blocks (embeddings, pooler or final norm) is copied by name.
        in_blocks = {id(t) for t in s_blocks.state_dict(keep_vars=True).values()}
        t_state = t_base.state_dict()
        for name, tensor in s_base.state_dict(keep_vars=True).items():
            if id(tensor) in in_blocks:
                continue
            if name not in t_state or t_state[name].shape != tensor.shape:
                raise UserError(f"{argname} teacher_layers: the teacher has no {name} of shape {tuple(tensor.shape)}")
            tensor.copy_(t_state[name])
        _copy_task_head(student, teacher)
    student_cfg = getattr(student, "module", student).config
    student_cfg.student_init = {"from": teacher_name or getattr(t_cfg, "_name_or_path", "") or "teacher",
                                "layers": list(layers)}
    logger.info("student initialised from the teacher: embeddings + teacher layers %s -> student layers 1..%d",
                ",".join(map(str, layers)), len(layers))
    return list(layers)


def _copy_task_head(student: nn.Module, teacher: nn.Module) -> None:
    """Parameters outside the base model (a classifier) are copied when both models have them with one shape."""
    student, teacher = getattr(student, "module", student), getattr(teacher, "module", teacher)
    if student is getattr(student, "base_model", student) or teacher is getattr(teacher, "base_model", teacher):
        return  # a bare encoder has no head
    prefix = getattr(student, "base_model_prefix", "") + "."
    t_state = teacher.state_dict()
    for name, param in student.state_dict().items():
        if name.startswith(prefix) or name not in t_state or t_state[name].shape != param.shape:
            continue
        param.copy_(t_state[name])


def add_student_init_args(parser) -> None:
    """--student_init random|teacher_layers and --init_layers, shared by every distillation script."""
    parser.add_argument("--student_init", choices=INIT_CHOICES, default="random",
                        help="teacher_layers: start the student from the teacher's embeddings and layers "
                        "(--init_layers; default spread uniformly, top layer kept) instead of random weights.",
                        identifies=True)
    parser.add_argument("--init_layers", default=None, type=layer_numbers,
                        help="With --student_init teacher_layers: the teacher layers (1-based, comma-separated, one "
                        "per student layer), e.g. 2,4,6.", identifies=True)


def apply_student_init(args, student: nn.Module, teacher: nn.Module, teacher_name: str | None = None) -> list[int] | None:
    """Initialise `student` from the teacher's layers when `args.student_init` says so; returns the layers used."""
    if getattr(args, "student_init", "random") != "teacher_layers":
        if getattr(args, "init_layers", None):
            raise UserError("--init_layers needs --student_init teacher_layers")
        return None
    n_s, n_t = len(encoder_layers(student)), len(encoder_layers(teacher))
    layers = parse_layer_list(args.init_layers, n_s, n_t, "--init_layers")
    return init_from_teacher_layers(student, teacher, layers, teacher_name)
