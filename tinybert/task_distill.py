"""TinyBERT task-specific distillation (`task_distill.py`).

Stage 1 (intermediate layers, default): student layer i learns from teacher layer g(i) (1-based; `--layer_map`,
default uniform with the top layer kept, g(i) = floor(i N_t / N_s + 1/2), also when the depths do not divide;
kdcore/student_init.uniform_layer_map),

    L = MSE(W e^S, e^T) + sum_i MSE(W h^S_i, h^T_{g(i)}) + sum_i MSE(A^S_i, A^T_{g(i)})

with the embedding output e, layer outputs h, raw attention scores A = QK^T/sqrt(d) (padded positions
excluded, see tinybert/losses.py) and W the trainable `fit_dense` (student width -> the teacher's width, read
from the teacher's config). Stage 2 (`--pred_distill`): soft cross-entropy against the teacher's logits at
temperature T; for STS-B (regression) the MSE to the teacher's score (`--stsb_target teacher`, default) or, as
TinyBERT's code did, to the gold score (`--stsb_target gold`). `--loss_reduction original` reduces every term as
TinyBERT's code did (means over all padded positions; soft cross-entropy also averaged over classes).

Stage 1 is a general-distillation method's objective built on the two classifiers (`--distill_method`, a row of
the method table the script passes in; default `tinybert`: `tinybert.intermediate.TinyBertIntermediateObjective`),
stage 2 `PredictionDistillObjective`; both are `kdcore.objective.DistillObjective`s (frozen teacher kept out of the
optimizer, DDP and checkpoints).
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

from kdcore.batching import encoder_inputs
from kdcore.cli import UserError, ensure_writable_dir
from kdcore.distill import DistillMethod, check_method_options
from kdcore.finetune import ListDataset, predict_batches
from kdcore.modeling import (
    build_student, check_length_fits, load_teacher, load_tokenizer, read_model_config, read_student_config,
)
from kdcore.objective import DistillObjective
from kdcore.student_init import apply_student_init, parse_layer_list
from tinybert.classification import (
    evaluate_all, eval_sets, glue_collate, has_tokenizer, is_classifier_config, label_config, load_classifier,
    predict_logits, predict_test_sets, read_folder_config, write_results,
)
from tinybert.glue import GlueTask, encode, get_task, label_order, load_split
from tinybert.losses import hinton_kd_loss, regression_mse, soft_cross_entropy, soft_cross_entropy_original
from kdcore.logit_cache import cached_teacher_logits, features_fingerprint, teacher_fingerprint
from kdcore.model_card import current_run, describe_run
from kdcore.runtime import Runtime
from kdcore.trainer import train

logger = logging.getLogger("kd.task_distill")


class PredictionDistillObjective(DistillObjective):
    """Stage 2: the student's logits against the teacher's (soft cross-entropy at `temperature`; MSE for
    regression tasks, to the teacher's score or, with stsb_target="gold", to the gold score). With `alpha` (a
    number in [0, 1]) a classification student learns from `hinton_kd_loss` instead: alpha x gold-label cross-entropy
    + (1 - alpha) x T^2 x KL to the teacher's softened distribution. With `teacher_logits`
    (N, C), the teacher's logits are read from it by each batch's `example_index` instead of running the teacher
    (see kdcore/logit_cache.py)."""

    TERMS = ("cls_loss",)

    def __init__(self, teacher: nn.Module, student: nn.Module, task: GlueTask, temperature: float = 1.0,
                 loss_reduction: str = "real_tokens", stsb_target: str = "teacher",
                 teacher_logits: torch.Tensor | None = None, alpha: float | None = None):
        super().__init__(teacher, student)
        self.alpha = alpha  # None: TinyBERT's soft cross-entropy alone
        self.task = task
        self.temperature = temperature
        self.loss_reduction = loss_reduction  # "real_tokens" or TinyBERT's "original" (class-averaged soft CE)
        self.regression_target = stsb_target  # "teacher" or "gold": what a regression student is fitted to
        self.teacher_logits = teacher_logits

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None, example_index=None):
        inputs = encoder_inputs(input_ids, attention_mask, token_type_ids)
        s_logits = self.student(**inputs).logits
        if self.teacher_logits is not None and example_index is not None:
            t_logits = self.teacher_logits[example_index.cpu()].to(s_logits.device)
        else:
            with torch.no_grad():
                t_logits = self.teacher(**inputs).logits
        if self.task.labels is None:
            target = labels if self.regression_target == "gold" else t_logits
            loss = regression_mse(s_logits, target)
        elif self.alpha is not None:
            loss = hinton_kd_loss(s_logits, t_logits, labels, self.temperature, self.alpha)
        elif self.loss_reduction == "original":
            loss = soft_cross_entropy_original(s_logits, t_logits, self.temperature)
        else:
            loss = soft_cross_entropy(s_logits, t_logits, self.temperature)
        return {"loss": loss, "cls_loss": loss.detach()}


def with_example_index(items: list[dict]) -> list[dict]:
    """The items with `example_index` (their position) added, so batches can look up cached teacher logits."""
    return [{**item, "example_index": i} for i, item in enumerate(items)]


def teacher_logits_for(teacher: nn.Module, teacher_path: str, items: list[dict], collate, max_seq_length: int,
                       task_name: str, cache_dir: str, batch_size: int, device) -> torch.Tensor:
    """The fine-tuned teacher's logits for every training item, computed once (cached; kdcore/logit_cache.py)."""
    key = {"data": features_fingerprint(items), "teacher": teacher_fingerprint(teacher_path, teacher.config),
           "max_seq_length": max_seq_length, "task": task_name.lower()}

    def compute():
        return torch.from_numpy(predict_logits(teacher, items, collate, batch_size, device))

    return cached_teacher_logits(cache_dir, key, len(items), compute, num_outputs=teacher.config.num_labels)


def mean_distill_losses(objective: DistillObjective, items: list[dict], collate, batch_size: int, device) -> dict:
    """The stage's loss terms averaged over a (dev) set, example-weighted."""
    def step(objective, batch):
        n = len(batch["input_ids"])
        return n, {k: float(v) * n for k, v in objective(**batch).items()}

    totals, count = {}, 0
    for n, sums in predict_batches(objective, items, collate, batch_size, device, step):
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + v
        count += n
    return {f"distill_{k}": v / max(1, count) for k, v in totals.items()}


def _check_teacher(teacher, task: GlueTask, path: str, pred_distill: bool) -> None:
    if is_classifier_config(teacher.config):
        if teacher.config.num_labels != task.num_labels:
            raise UserError(f"--teacher_model {path}: a classifier with {teacher.config.num_labels} outputs; "
                            f"{task.name} needs {task.num_labels}")
    elif pred_distill:
        raise UserError(f"--teacher_model {path}: not a fine-tuned sequence-classification model (its predictions "
                        f"would come from an untrained head); fine-tune it on {task.name} with run_glue.py first")
    else:
        logger.warning("--teacher_model %s is not fine-tuned for %s: only its intermediate layers are used", path, task.name)


def resolve_stage_defaults(args) -> None:
    """The schedule and warmup a stage trains with unless given: TinyBERT trained its intermediate-layer stage at a
    constant rate with no warmup (BertAdam schedule "none"), its prediction-layer stage with linear decay after
    10 % warmup. The run record (model card, training_args.json) gets the values used."""
    if getattr(args, "lr_schedule", None) is None:
        args.lr_schedule = "linear" if args.pred_distill else "constant"
    if getattr(args, "warmup_proportion", None) is None:
        args.warmup_proportion = 0.1 if args.pred_distill else 0.0
    run = current_run()
    if run is not None:
        run.args.update(lr_schedule=args.lr_schedule, warmup_proportion=args.warmup_proportion)


def check_student_against_teacher_config(args) -> None:
    """The student config and the layer options, checked against the teacher's config before any weights load."""
    if not args.teacher_model or args.do_eval:
        return
    path = os.path.join(args.student_model, "config.json") if os.path.isdir(args.student_model) else args.student_model
    if not os.path.isfile(path):
        return  # reported where the student is built
    teacher_layers = read_model_config(args.teacher_model, "--teacher_model").num_hidden_layers
    student_layers = read_student_config(path).get("num_hidden_layers", teacher_layers)
    if args.layer_map:
        parse_layer_list(args.layer_map, student_layers, teacher_layers, "--layer_map")
    if args.init_layers and getattr(args, "student_init", "random") == "teacher_layers":
        parse_layer_list(args.init_layers, student_layers, teacher_layers, "--init_layers")


def run_task_distill(args, methods: dict[str, DistillMethod]) -> dict:
    """Task distillation with stage 1's objective from `methods[args.distill_method]` (stage 2: the prediction
    layer); returns the saved model's dev results."""
    from transformers import AutoModelForSequenceClassification

    task = get_task(args.task_name)
    task_key = args.task_name.lower()
    resolve_stage_defaults(args)
    describe_run("tinybert" if args.pred_distill else args.distill_method,
                 ["knowledge-distillation", "task-distillation",
                  "prediction-layer" if args.pred_distill else "intermediate-layers"],
                 datasets=[f"glue/{args.task_name}"], pipeline_tag="text-classification")
    if args.pred_distill and args.distill_method != "tinybert":
        raise UserError(f"--distill_method {args.distill_method} chooses stage 1's objective; stage 2 "
                        "(--pred_distill) distils the prediction layer")
    if not args.pred_distill and not args.do_eval:
        check_method_options(args, methods)
    if args.alpha is not None and (task.labels is None or not args.pred_distill):
        raise UserError("--alpha mixes gold and soft labels in prediction-layer distillation (--pred_distill) of a "
                        f"classification task; not for {'stage 1' if task.labels is not None else task.name}")
    if args.stsb_target == "gold" and task.labels is not None:
        raise UserError(f"--stsb_target gold is for the regression task STS-B, not {task.name}")
    if not os.path.isdir(args.data_dir):
        raise UserError(f"--data_dir: no such folder: {args.data_dir}")
    for arg, path in (("--teacher_model", args.teacher_model), ("--student_model", args.student_model)):
        check_length_fits(path, args.max_seq_length, "--max_seq_length", arg)
    check_student_against_teacher_config(args)
    ensure_writable_dir(args.output_dir)
    eval_only = args.do_eval
    if not eval_only and not args.teacher_model:
        raise UserError("--teacher_model is required for distillation (only --do_eval runs without a teacher)")
    rt = Runtime(args)
    student_is_folder = os.path.isdir(args.student_model) and read_folder_config(args.student_model) is not None
    tok_path = args.student_model if has_tokenizer(args.student_model) else args.teacher_model
    if not has_tokenizer(tok_path) and not (tok_path and os.path.isfile(tok_path)):
        raise UserError("neither --student_model nor --teacher_model has tokenizer files")
    do_lower = True if args.do_lower_case else None
    tokenizer = load_tokenizer(tok_path, "--student_model" if tok_path == args.student_model else "--teacher_model",
                               do_lower_case=do_lower)

    teacher = None
    if eval_only:
        s_cfg = read_folder_config(args.student_model)
        labels = label_order(task, s_cfg if (s_cfg is not None and is_classifier_config(s_cfg)) else None)
    else:
        teacher = load_teacher(args.teacher_model, model_class=AutoModelForSequenceClassification)
        _check_teacher(teacher, task, args.teacher_model, args.pred_distill)
        labels = label_order(task, teacher.config if is_classifier_config(teacher.config) else None)
        for k, v in label_config(task, labels).items():
            setattr(teacher.config, k, v)

    from_teacher = getattr(args, "student_init", "random") == "teacher_layers"
    if from_teacher and eval_only:
        raise UserError("--student_init teacher_layers needs a teacher (not --do_eval)")
    if student_is_folder and not from_teacher:
        student = load_classifier(args.student_model, task, labels, "--student_model", tokenizer=tokenizer)
    else:  # a student config JSON (e.g. configs/tinybert_4L_312D.json); the rest follows the teacher
        if teacher is None:
            raise UserError(f"--student_model {args.student_model}: --do_eval needs a trained model folder")
        student = build_student(os.path.join(args.student_model, "config.json") if student_is_folder
                                else args.student_model, teacher.config, tokenizer,
                                model_class=AutoModelForSequenceClassification)
        for k, v in label_config(task, labels).items():
            setattr(student.config, k, v)
        # the fine-tuned teacher's embeddings, chosen layers and classifier (--student_init teacher_layers)
        apply_student_init(args, student, teacher, args.teacher_model)
    if teacher is not None and student.config.vocab_size != teacher.config.vocab_size:
        raise UserError(f"--student_model: vocabulary {student.config.vocab_size} differs from the teacher's "
                        f"{teacher.config.vocab_size}")

    collate = glue_collate(tokenizer)
    sets = eval_sets(task_key, task, args.data_dir, tokenizer, labels, args.max_seq_length, args.max_eval_examples)
    if eval_only:
        student = student.to(rt.device)
        result = {}
        if rt.is_main:
            result = evaluate_all(student, sets, task, collate, args.eval_batch_size, rt.device)
            write_results(result, args.output_dir)
            if args.do_predict:
                predict_test_sets(student, task_key, task, args.data_dir, tokenizer, labels, args.max_seq_length,
                                  args.output_dir, args.eval_batch_size, rt.device)
        rt.barrier()
        return result

    examples = load_split(args.data_dir, task, "train", aug_train=args.aug_train, max_examples=args.max_train_examples)
    items = encode(examples, tokenizer, task, labels, args.max_seq_length)
    teacher_logits = None
    if args.pred_distill:  # the frozen eval-mode teacher's logits are the same every epoch: compute them once
        teacher_logits = teacher_logits_for(teacher.to(rt.device), args.teacher_model, items, collate,
                                            args.max_seq_length, args.task_name, args.cache_dir or args.output_dir,
                                            args.eval_batch_size, rt.device)
        items = with_example_index(items)
    train_set = ListDataset(items)
    if args.pred_distill:
        objective = PredictionDistillObjective(teacher, student, task, args.temperature,
                                               loss_reduction=args.loss_reduction, stsb_target=args.stsb_target,
                                               teacher_logits=teacher_logits, alpha=args.alpha)
    else:
        objective = methods[args.distill_method].build(args, teacher, student)
        # stage 1 keeps general distillation's extras when the student folder has them (TinyBERT's fit_dense)
        for name in objective.load_extras(args.student_model if student_is_folder else None):
            logger.info("%s loaded from %s (general distillation's)", name, args.student_model)
    denom = max(1, args.gradient_accumulation_steps) * rt.world_size
    if args.train_batch_size % denom:
        raise UserError(f"--train_batch_size {args.train_batch_size} is not divisible by gradient accumulation steps "
                        f"x processes = {denom}")
    micro_batch = args.train_batch_size // denom

    def evaluate_fn(obj, step):
        result = evaluate_all(obj.student, sets, task, collate, args.eval_batch_size, rt.device)
        if not args.pred_distill:  # stage 1: the intermediate losses on dev say how far the student got
            result.update(mean_distill_losses(obj, sets[""], collate, args.eval_batch_size, rt.device))
        return result

    logger.info("stage %s: %d training examples, total batch %d", "2 (prediction layer)" if args.pred_distill
                else "1 (intermediate layers)", len(train_set), args.train_batch_size)
    result = train(rt, args, objective, train_set, collate, micro_batch, args.num_train_epochs,
                   lambda obj, folder: obj.save(folder, tokenizer),
                   evaluate_fn=evaluate_fn, eval_steps=args.eval_step if args.pred_distill else 0,
                   metric_for_best=task.metric if args.pred_distill else None)
    final = {}
    if rt.is_main:
        # Results of the model that was saved (the best one in stage 2, the last one in stage 1).
        history = result.eval_history
        if args.pred_distill:
            best = max(history, key=lambda r: r[f"eval_{task.metric}"])
        else:
            best = history[-1]
        final = {k[len("eval_"):]: v for k, v in best.items() if k.startswith("eval_")}
        final["global_step"] = best["step"]
        for k, v in result.last_losses.items():
            final[f"train_{k}"] = v
        write_results(final, args.output_dir)
        if args.do_predict:
            saved = load_classifier(args.output_dir, task, labels, "--output_dir", tokenizer=tokenizer).to(rt.device)
            predict_test_sets(saved, task_key, task, args.data_dir, tokenizer, labels, args.max_seq_length,
                              args.output_dir, args.eval_batch_size, rt.device)
    rt.barrier()
    return final
