"""The method-agnostic general-distillation driver: pregenerated data -> teacher + student -> objective -> trainer.

A method is one `DistillMethod` (name, its own options, a `build` function returning a `DistillObjective`),
defined in its package (tinybert/, minilm/); `general_distill.py` holds the table of methods and passes it here:

    parser = build_parser(METHODS)
    args = parse_args(parser, argv)
    distill(args, METHODS)

Argument names and defaults follow TinyBERT's general_distill.py (BertAdam's weight decay 0.01 and epsilon 1e-6
included); `--train_batch_size` is per process and includes gradient accumulation, as there.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from .cli import ArgumentParser, UserError
from .families import max_input_positions, uses_token_type_ids
from .modeling import build_student, load_teacher, load_tokenizer, read_model_config, read_student_config
from .objective import DistillObjective
from .pregenerated_data import PackedBlocks, PregeneratedCollator, PregeneratedTrainingData, is_packed
from .runtime import Runtime, add_runtime_args
from .sentence_embeddings import write_sentence_transformers_files
from .student_init import add_student_init_args, apply_student_init
from .trainer import train
from .model_card import describe_run

logger = logging.getLogger("kd")


@dataclass(frozen=True)
class Option:
    """One command-line option of a method: `parser.add_argument(flag, **kwargs)`."""

    flag: str
    kwargs: dict = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-")


def option(flag: str, **kwargs) -> Option:
    return Option(flag, kwargs)


@dataclass(frozen=True)
class DistillMethod:
    """A general-distillation method: its options and how it builds its objective from (args, teacher, student)."""

    name: str
    summary: str
    options: tuple[Option, ...]
    build: Callable[[argparse.Namespace, nn.Module, nn.Module], DistillObjective]
    needs_teacher_width: bool = False  # the objective compares hidden states directly: the student is as wide


TEACHER_LAYER = option(
    "--teacher_layer", type=int, default=None,
    help="Teacher layer to distil, 1-based as in the papers (e.g. 21 of 24 for BERT-large, 19 of 24 for "
    "RoBERTa-large / XLM-R-large); negative counts from the end. Default: the last layer.",
    identifies=True, range="any")


def _method_options(methods: dict[str, DistillMethod]) -> dict[str, tuple[Option, list[str]]]:
    """flag -> (its Option, the methods that take it); methods may share an Option object (e.g. TEACHER_LAYER)."""
    table: dict[str, tuple[Option, list[str]]] = {}
    for method in methods.values():
        for opt in method.options:
            if opt.flag in table and table[opt.flag][0] != opt:
                raise ValueError(f"{opt.flag} is defined differently by two methods")
            table.setdefault(opt.flag, (opt, []))[1].append(method.name)
    return table


def add_method_args(parser: argparse.ArgumentParser, methods: dict[str, DistillMethod],
                    default_method: str | None = None) -> None:
    """`--distill_method` (one of `methods`) and every method's own options, each help prefixed by its methods."""
    parser.add_argument("--distill_method", choices=list(methods),
                        default=default_method if default_method is not None else next(iter(methods)),
                        help="; ".join(f"{m.name}: {m.summary}" for m in methods.values()), identifies=True)
    group = parser.add_argument_group("method options")
    for opt, owners in _method_options(methods).values():
        kwargs = dict(opt.kwargs)
        kwargs["help"] = f"[{'/'.join(owners)}] " + kwargs.get("help", "")
        group.add_argument(opt.flag, **kwargs)


def build_parser(methods: dict[str, DistillMethod], default_method: str | None = None,
                 script: str | None = None) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        script=script, description="General distillation (" + " / ".join(methods) + ") of a teacher over data written by "
        "pregenerate_training_data.py.")
    parser.add_argument("--pregenerated_data", required=True,
                        help="Folder written by pregenerate_training_data.py: epochs (binary shards or epoch_N.json, with "
                        "epoch_N_metrics.json) or packed sequences (packed_metrics.json; shuffled by the trainer).",
                        identifies=True)
    parser.add_argument("--teacher_model", required=True, help="Teacher: a HF model folder (with its tokenizer).",
                        identifies=True)
    parser.add_argument("--student_model", required=True,
                        help="Student: a config JSON (e.g. configs/minilm_L6xH384.json; size fields only, the "
                        "vocabulary follows the teacher) or a folder (its config.json; its weights with --continue_train).",
                        identifies=True)
    parser.add_argument("--reduce_memory", action="store_true",
                        help="Keep the pregenerated examples in memory-mapped files instead of RAM.",
                        identifies=False)
    parser.add_argument("--do_lower_case", action="store_true",
                        help="Accepted for compatibility; the data is already tokenized with the teacher's tokenizer.",
                        identifies=True)
    parser.add_argument("--train_batch_size", type=int, default=32,
                        help="Examples per optimisation step per process (split into --gradient_accumulation_steps).",
                        identifies=True, range=">=1")
    parser.add_argument("--num_train_epochs", type=float, default=3.0, identifies=True, range=">0")
    parser.add_argument("--continue_train", action="store_true",
                        help="Start from the weights in the --student_model folder (and its trainable extras, e.g. "
                        "TinyBERT's fit_dense) instead of a random initialisation from its config.", identifies=True)
    add_student_init_args(parser)
    add_method_args(parser, methods, default_method)
    add_runtime_args(
        parser,
        # TinyBERT's general_distill.py: lr 5e-5, BertAdam (weight decay 0.01, eps 1e-6), warmup 0.1, save every
        # --eval_step (1000) steps.
        defaults={"learning_rate": 5e-5, "weight_decay": 0.01, "adam_epsilon": 1e-6, "warmup_proportion": 0.1,
                  "save_steps": 1000, "save_total_limit": 3},
        aliases={"save_steps": ["--eval_step"]},
    )
    return parser


def check_method_options(args, methods: dict[str, DistillMethod]) -> None:
    """An option of another method, set away from its default, is a mistake worth one clear line."""
    for opt, owners in _method_options(methods).values():
        if args.distill_method not in owners and getattr(args, opt.dest) != opt.kwargs.get("default"):
            raise UserError(f"{opt.flag} is for --distill_method {'/'.join(owners)}, not {args.distill_method}")


def load_student(args, teacher, tokenizer):
    """The student: random initialisation from a config (or a folder's config.json), the teacher's own layers
    (--student_init teacher_layers), or a folder's weights with --continue_train."""
    path = args.student_model
    has_weights = os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, n)) for n in ("model.safetensors", "pytorch_model.bin"))
    if args.continue_train:
        if getattr(args, "student_init", "random") != "random":
            raise UserError("--continue_train starts from the --student_model folder's weights; drop --student_init")
        if not has_weights:
            raise UserError(f"--continue_train: --student_model {path} is not a folder with model weights")
        return build_student(path, teacher.config, tokenizer)
    if os.path.isdir(path):
        if has_weights:
            logger.info("--student_model %s: initialising from its config.json only (add --continue_train to start "
                        "from its weights)", path)
        path = os.path.join(path, "config.json")
    student = build_student(path, teacher.config, tokenizer)
    apply_student_init(args, student, teacher, getattr(args, "teacher_model", None))
    return student


def save_student(objective: DistillObjective, folder: str, tokenizer, teacher_model: str) -> None:
    """The student folder (extras such as fit_dense beside it); a sentence-transformers folder like the teacher's
    when the teacher is one."""
    objective.save(folder, tokenizer)
    write_sentence_transformers_files(teacher_model, folder, objective.student.config.hidden_size)


def check_batch_args(args) -> None:
    if args.train_batch_size < 1 or args.gradient_accumulation_steps < 1:
        raise UserError("--train_batch_size and --gradient_accumulation_steps must be positive")
    if args.train_batch_size % args.gradient_accumulation_steps:
        raise UserError(f"--train_batch_size {args.train_batch_size} is not divisible by "
                        f"--gradient_accumulation_steps {args.gradient_accumulation_steps}")
    if args.num_train_epochs <= 0:
        raise UserError("--num_train_epochs must be positive")


def distill(args, methods: dict[str, DistillMethod]):
    """General distillation with `methods[args.distill_method]`; returns the trainer's result."""
    describe_run(args.distill_method, ["knowledge-distillation", "general-distillation"])
    check_batch_args(args)
    check_method_options(args, methods)
    if not args.continue_train:  # the student's config is checked before any model is loaded
        path = args.student_model
        read_student_config(os.path.join(path, "config.json") if os.path.isdir(path) else path, "--student_model")
    rt = Runtime(args)  # seeds first, so the student's random initialisation is reproducible
    tokenizer = load_tokenizer(args.teacher_model, "--teacher_model", do_lower_case=True if args.do_lower_case else None)
    teacher_config = read_model_config(args.teacher_model, "--teacher_model")
    max_positions = max_input_positions(teacher_config)
    if is_packed(args.pregenerated_data):  # packed sequences: one stream of blocks, shuffled by the trainer
        epochs, shuffle = 1, True
        dataset = PackedBlocks(args.pregenerated_data, tokenizer, max_positions=max_positions)
        data_epochs = "packed sequences, 1"
    else:  # epoch files: training epoch e reads data epoch e % D, shuffled by PregeneratedTrainingData itself
        epochs, shuffle = math.ceil(args.num_train_epochs), False
        dataset = PregeneratedTrainingData(
            args.pregenerated_data, tokenizer, num_train_epochs=epochs, seed=args.seed,
            reduce_memory=args.reduce_memory, max_positions=max_positions,
        )
        dataset.data_epoch(0)  # read and check the first data epoch before any model is loaded
        data_epochs = dataset.num_data_epochs
    teacher = load_teacher(args.teacher_model)
    student = load_student(args, teacher, tokenizer)
    objective = methods[args.distill_method].build(args, teacher, student)
    if args.continue_train:  # the trainable extras saved beside the student (TinyBERT's fit_dense) continue too
        for name in objective.load_extras(args.student_model):
            logger.info("continuing %s from %s", name, args.student_model)
    collate = PregeneratedCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                                   use_token_type_ids=uses_token_type_ids(teacher.config))
    if rt.is_main:
        n_t = sum(p.numel() for p in teacher.parameters())
        n_s = sum(p.numel() for p in student.parameters())
        logger.info("%s distillation: teacher %s (%.1fM params), student %d x %d (%.1fM params), %s data epoch(s), "
                    "%d training epoch(s), %d examples", args.distill_method, args.teacher_model, n_t / 1e6,
                    student.config.num_hidden_layers, student.config.hidden_size, n_s / 1e6,
                    data_epochs, epochs, len(dataset))
    return train(
        rt, args, objective, dataset, collate,
        batch_size=args.train_batch_size // args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs / epochs,  # epoch files: the dataset already spans every epoch
        save_model_fn=lambda model, folder: save_student(model, folder, tokenizer, args.teacher_model),
        shuffle=shuffle,
    )
