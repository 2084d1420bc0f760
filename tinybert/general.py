"""General (task-agnostic) distillation over pregenerated data: TinyBERT, MiniLM v1 and MiniLMv2.

`general_distill.py` is the thin command-line shell over `build_parser()` and `run()`.

    --distill_method tinybert   embedding + hidden-state MSE (through fit_dense) + attention-score MSE on mapped
                                layers (tinybert.intermediate, the default, as TinyBERT's general_distill.py)
    --distill_method minilm     MiniLM v1: last-layer attention distributions + value relations (minilm.objectives)
    --distill_method minilmv2   MiniLMv2: Q-Q / K-K / V-V self-attention relations over --num_relation_heads

Argument names and defaults follow TinyBERT's general_distill.py (BertAdam's weight decay 0.01 and epsilon 1e-6
included); `--train_batch_size` is per process and includes gradient accumulation, as there.
"""
from __future__ import annotations

import argparse
import logging
import math
import os

from kdcore.cli import UserError
from kdcore.modeling import build_student, load_teacher, load_tokenizer, save_model
from kdcore.runtime import Runtime, add_runtime_args, train
from kdcore.sentence_embeddings import write_sentence_transformers_files
from kdcore.student_init import add_student_init_args, apply_student_init

from .intermediate import TinyBertIntermediateObjective
from .pregenerated import PregeneratedCollator, PregeneratedTrainingData

logger = logging.getLogger("kd")

METHODS = ("tinybert", "minilm", "minilmv2")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="General distillation (TinyBERT / MiniLM v1 / MiniLMv2) of a BERT, RoBERTa or XLM-R teacher "
        "over data written by pregenerate_training_data.py."
    )
    parser.add_argument("--pregenerated_data", required=True,
                        help="Folder with epoch_N.json and epoch_N_metrics.json (from pregenerate_training_data.py).")
    parser.add_argument("--teacher_model", required=True, help="Teacher: a HF model folder (with its tokenizer).")
    parser.add_argument("--student_model", required=True,
                        help="Student: a config JSON (e.g. configs/minilm_L6xH384.json; size fields only, the "
                        "vocabulary follows the teacher) or a folder (its config.json; its weights with --continue_train).")
    parser.add_argument("--distill_method", choices=METHODS, default="tinybert")
    parser.add_argument("--reduce_memory", action="store_true",
                        help="Keep the pregenerated examples in memory-mapped files instead of RAM.")
    parser.add_argument("--do_lower_case", action="store_true",
                        help="Accepted for compatibility; the data is already tokenized with the teacher's tokenizer.")
    parser.add_argument("--train_batch_size", type=int, default=32,
                        help="Examples per optimisation step per process (split into --gradient_accumulation_steps).")
    parser.add_argument("--num_train_epochs", type=float, default=3.0)
    parser.add_argument("--continue_train", action="store_true",
                        help="Start from the weights in the --student_model folder (and its fit_dense for tinybert) "
                        "instead of a random initialisation from its config.")
    add_student_init_args(parser)
    parser.add_argument("--layer_map", default=None,
                        help="TinyBERT: teacher layer (1-based) for each student layer, e.g. 2,3,5,6; default: uniform, "
                        "top layer kept (nearest uniform map when the depths do not divide).")
    g = parser.add_argument_group("MiniLM v1 / v2")
    g.add_argument("--teacher_layer", type=int, default=None,
                   help="Teacher layer to distil, 1-based as in the papers (e.g. 21 of 24 for BERT-large, 19 of 24 "
                   "for RoBERTa-large / XLM-R-large); negative counts from the end. Default: the last layer.")
    g.add_argument("--num_relation_heads", type=int, default=48,
                   help="MiniLMv2 relation heads; must divide both hidden sizes (48 for base teachers, 64 for large).")
    g.add_argument("--qq_weight", type=float, default=1.0, help="MiniLMv2 weight of the Q-Q relation term.")
    g.add_argument("--kk_weight", type=float, default=1.0, help="MiniLMv2 weight of the K-K relation term.")
    g.add_argument("--vv_weight", type=float, default=1.0, help="MiniLMv2 weight of the V-V relation term.")
    g.add_argument("--attention_weight", type=float, default=1.0, help="MiniLM v1 weight of the attention term.")
    g.add_argument("--value_relation_weight", type=float, default=1.0, help="MiniLM v1 weight of the value-relation term.")
    add_runtime_args(
        parser,
        # TinyBERT's general_distill.py: lr 5e-5, BertAdam (weight decay 0.01, eps 1e-6), warmup 0.1, save every
        # --eval_step (1000) steps.
        defaults={"learning_rate": 5e-5, "weight_decay": 0.01, "adam_epsilon": 1e-6, "warmup_proportion": 0.1,
                  "save_steps": 1000, "save_total_limit": 3},
        aliases={"save_steps": ["--eval_step"]},
    )
    return parser


def max_input_positions(config) -> int:
    """Longest input the model's position embeddings allow (RoBERTa-style models offset positions by pad+1)."""
    n = config.max_position_embeddings
    if config.model_type in ("roberta", "xlm-roberta", "camembert"):
        n -= (config.pad_token_id or 0) + 1
    return n


def build_objective(args, teacher, student):
    method = args.distill_method
    if method == "tinybert":
        if args.teacher_layer is not None:
            raise UserError("--teacher_layer is for --distill_method minilm/minilmv2 (TinyBERT maps all layers)")
        objective = TinyBertIntermediateObjective(teacher, student, args.layer_map)
        if args.continue_train and objective.load_fit_dense(args.student_model):
            logger.info("continuing fit_dense from %s", args.student_model)
        return objective
    if args.layer_map:
        raise UserError("--layer_map is for --distill_method tinybert (MiniLM distils one layer: --teacher_layer)")
    from minilm.objectives import MiniLMObjective

    if method == "minilm":
        weights = {"attention": args.attention_weight, "value_relation": args.value_relation_weight}
    else:
        weights = {"qq": args.qq_weight, "kk": args.kk_weight, "vv": args.vv_weight}
    return MiniLMObjective(teacher, student, method=method, teacher_layer=args.teacher_layer,
                           num_relation_heads=args.num_relation_heads, weights=weights)


def load_student(args, teacher, tokenizer):
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


def run(args):
    if args.train_batch_size < 1 or args.gradient_accumulation_steps < 1:
        raise UserError("--train_batch_size and --gradient_accumulation_steps must be positive")
    if args.train_batch_size % args.gradient_accumulation_steps:
        raise UserError(f"--train_batch_size {args.train_batch_size} is not divisible by "
                        f"--gradient_accumulation_steps {args.gradient_accumulation_steps}")
    if args.num_train_epochs <= 0:
        raise UserError("--num_train_epochs must be positive")
    rt = Runtime(args)  # seeds first, so the student's random initialisation is reproducible
    tokenizer = load_tokenizer(args.teacher_model, "--teacher_model", do_lower_case=True if args.do_lower_case else None)
    teacher = load_teacher(args.teacher_model)
    student = load_student(args, teacher, tokenizer)
    objective = build_objective(args, teacher, student)

    epochs = math.ceil(args.num_train_epochs)
    dataset = PregeneratedTrainingData(
        args.pregenerated_data, tokenizer, num_train_epochs=epochs, seed=args.seed, reduce_memory=args.reduce_memory,
        max_positions=max_input_positions(teacher.config),
    )
    collate = PregeneratedCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                                   use_token_type_ids=getattr(teacher.config, "type_vocab_size", 2) > 1)
    if rt.is_main:
        n_t = sum(p.numel() for p in teacher.parameters())
        n_s = sum(p.numel() for p in student.parameters())
        logger.info("%s distillation: teacher %s (%.1fM params), student %d x %d (%.1fM params), %d data epoch(s), "
                    "%d training epoch(s), %d examples", args.distill_method, args.teacher_model, n_t / 1e6,
                    student.config.num_hidden_layers, student.config.hidden_size, n_s / 1e6,
                    dataset.num_data_epochs, epochs, len(dataset))

    def save_fn(model, folder):  # the student as a HF folder; TinyBERT's fit_dense beside it
        extra = {"fit_dense": model.fit_dense} if hasattr(model, "fit_dense") else None
        save_model(model.student, folder, tokenizer, extra_modules=extra)
        write_sentence_transformers_files(args.teacher_model, folder, model.student.config.hidden_size)

    return train(
        rt, args, objective, dataset, collate,
        batch_size=args.train_batch_size // args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs / epochs,  # the dataset already spans all training epochs
        save_model_fn=save_fn,
        shuffle=False,  # PregeneratedTrainingData shuffles inside each epoch itself
    )
