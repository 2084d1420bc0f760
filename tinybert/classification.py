"""Sequence classification / regression on GLUE, on the one fine-tuning driver (`kdcore/finetune.py`): GLUE
supplies the reader (`tinybert.glue.load_split`), the encoder (`tinybert.glue.encode`) and the metric
(`tinybert.glue.compute_metrics`); this module adds the gold-label loss, evaluation, predictions, the
classifier's label head, and plain fine-tuning (`run_glue.py`). Task distillation (`tinybert/task_distill.py`)
reuses all of it.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdcore import model_card
from kdcore.cli import UserError, ensure_writable_dir
from kdcore.files import atomic_open, atomic_write_json
from kdcore.finetune import checkpoints_to_evaluate, pad_collate, predict_batches, train_task
from kdcore.modeling import check_length_fits, check_vocab, hf_from_pretrained, load_model, load_tokenizer
from tinybert.glue import GlueTask, InputExample, TASKS, compute_metrics, encode, get_task, label_order, load_split
from kdcore.runtime import Runtime

logger = logging.getLogger("kd.glue")

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "sentencepiece.bpe.model", "spiece.model")


# --------------------------------------------------------------------------------------------------------------
# Loss, batches, evaluation and predictions (the encoder is tinybert.glue.encode, the metric compute_metrics)
# --------------------------------------------------------------------------------------------------------------
def task_loss(logits: torch.Tensor, labels: torch.Tensor, task: GlueTask) -> torch.Tensor:
    """Gold-label loss: cross-entropy (classification) or MSE (regression, STS-B)."""
    if task.labels is None:
        return F.mse_loss(logits.float().view(-1), labels.float().view(-1))
    return F.cross_entropy(logits.float(), labels)


def glue_collate(tokenizer):
    """Batches of encoded items padded with the tokenizer's pad id (0 when it has none)."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return lambda items: pad_collate(items, pad_id)


def predict_logits(model: nn.Module, items: list[dict], collate, batch_size: int, device, autocast=None) -> np.ndarray:
    def step(model, batch):
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float().cpu().numpy()

    out = predict_batches(model, items, collate, batch_size, device, step, autocast)
    return np.concatenate(out, axis=0) if out else np.zeros((0, 1), dtype=np.float32)


def evaluate(model: nn.Module, items: list[dict], task: GlueTask, collate, batch_size: int, device,
             autocast=None) -> dict:
    """GLUE metrics of `model` on labelled items, plus `eval_loss` (CE or MSE against the gold labels)."""
    logits = predict_logits(model, items, collate, batch_size, device, autocast)
    gold = np.asarray([it["labels"] for it in items])
    if task.labels is None:
        preds = logits.reshape(-1)
        loss = float(np.mean((preds - gold) ** 2))
    else:
        preds = logits.argmax(axis=-1)
        logp = torch.log_softmax(torch.from_numpy(logits), dim=-1)
        loss = float(F.nll_loss(logp, torch.from_numpy(gold).long()))
    result = compute_metrics(task, preds, gold)
    result["eval_loss"] = loss
    return result


def write_predictions(model, examples: list[InputExample], items: list[dict], collate, labels: list[str] | None,
                      path: str, batch_size: int, device) -> None:
    """GLUE submission file: `index<TAB>prediction` (a label name, or a score for STS-B)."""
    logits = predict_logits(model, items, collate, batch_size, device)
    lines = ["index\tprediction"]
    for example, row in zip(examples, logits):
        index = example.guid.split("-", 1)[1]
        value = f"{float(row[0]):.3f}" if labels is None else labels[int(row.argmax())]
        lines.append(f"{index}\t{value}")
    with atomic_open(path) as f:
        f.write("\n".join(lines) + "\n")


def submission_name(task_key: str, task: GlueTask) -> str:
    return {"mnli": "MNLI-m", "mnli-mm": "MNLI-mm"}.get(task_key, task.name) + ".tsv"


# --------------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------------
def has_tokenizer(folder: str | None) -> bool:
    return bool(folder) and os.path.isdir(folder) and any(os.path.isfile(os.path.join(folder, n)) for n in TOKENIZER_FILES)


def read_folder_config(path: str | None):
    """The config of a model folder, or None (a config JSON file, a weights file, a missing path)."""
    if path and os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json")):
        from transformers import AutoConfig

        return hf_from_pretrained(AutoConfig, path, "model folder")
    return None


def label_config(task: GlueTask, labels: list[str] | None) -> dict:
    """Config fields that make a sequence-classification head for `task` with `labels` in this order."""
    if labels is None:
        return {"num_labels": 1, "id2label": {0: "score"}, "label2id": {"score": 0}, "problem_type": "regression"}
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {lab: i for i, lab in enumerate(labels)}, "problem_type": "single_label_classification"}


def is_classifier_config(config) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def load_classifier(path: str, task: GlueTask, labels: list[str] | None, argname: str, config_name: str | None = None,
                    tokenizer=None):
    """A sequence-classification model for `task` from a folder (a fine-tuned one, or a bare encoder whose head
    is then new) or a weights file + `config_name`."""
    from transformers import AutoModelForSequenceClassification

    config = read_folder_config(path) if config_name is None else None
    if config is not None and is_classifier_config(config) and config.num_labels != task.num_labels:
        raise UserError(f"{argname} {path}: a classifier with {config.num_labels} outputs; {task.name} needs {task.num_labels}")
    model = load_model(path, AutoModelForSequenceClassification, config_name=config_name, argname=argname,
                       **label_config(task, labels))
    check_vocab(model.config, tokenizer, None, argname)
    return model


# --------------------------------------------------------------------------------------------------------------
# Shared driver pieces
# --------------------------------------------------------------------------------------------------------------
def eval_sets(task_key: str, task: GlueTask, data_dir: str, tokenizer, labels, max_seq_length: int,
              max_examples: int | None) -> dict[str, list[dict]]:
    """Encoded dev sets to evaluate: the task's dev set, and for MNLI the mismatched one too (prefix "mm_")."""
    sets = {"": encode(load_split(data_dir, task, "dev", max_examples=max_examples), tokenizer, task, labels,
                       max_seq_length)}
    if task_key == "mnli":
        mm = TASKS["mnli-mm"]
        sets["mm_"] = encode(load_split(data_dir, mm, "dev", max_examples=max_examples), tokenizer, mm, labels,
                             max_seq_length)
    return sets


def evaluate_all(model, sets: dict[str, list[dict]], task: GlueTask, collate, batch_size: int, device,
                 autocast=None) -> dict:
    result = {}
    for prefix, items in sets.items():
        for k, v in evaluate(model, items, task, collate, batch_size, device, autocast).items():
            result[prefix + k] = v
    return result


def predict_test_sets(model, task_key: str, task: GlueTask, data_dir: str, tokenizer, labels, max_seq_length: int,
                      output_dir: str, batch_size: int, device) -> list[str]:
    written = []
    keys = [task_key] + (["mnli-mm"] if task_key == "mnli" else [])
    for key in keys:
        t = TASKS[key]
        examples = load_split(data_dir, t, "test")
        path = os.path.join(output_dir, submission_name(key, t))
        write_predictions(model, examples, encode(examples, tokenizer, t, labels, max_seq_length),
                          glue_collate(tokenizer), labels, path, batch_size, device)
        written.append(path)
    return written


def write_results(result: dict, output_dir: str, name: str = "eval_results.json") -> str:
    path = os.path.join(output_dir, name)
    def number(v):
        return int(v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else float(v)

    atomic_write_json({k: number(v) for k, v in result.items()}, path)
    model_card.note_results(result, output_dir)
    for k in sorted(result):
        logger.info("  %s = %s", k, result[k])
    return path


def run_glue(args) -> dict:
    """Plain fine-tuning / evaluation / prediction (run_glue.py)."""
    task = get_task(args.task_name)
    task_key = args.task_name.lower()
    model_card.describe_run("fine-tuning", ["fine-tuning"], datasets=[f"glue/{args.task_name}"],
                            pipeline_tag="text-classification")
    if not (args.do_train or args.do_eval or args.do_predict):
        raise UserError("nothing to do: give --do_train, --do_eval and/or --do_predict")
    if not os.path.isdir(args.data_dir):
        raise UserError(f"--data_dir: no such folder: {args.data_dir}")
    check_length_fits(args.config_name or args.model_name_or_path, args.max_seq_length, "--max_seq_length",
                      "--config_name" if args.config_name else "--model_name_or_path")
    ensure_writable_dir(args.output_dir)
    tok_path = args.tokenizer_name or (args.model_name_or_path if has_tokenizer(args.model_name_or_path) else None)
    if tok_path is None:
        raise UserError(f"--model_name_or_path {args.model_name_or_path} has no tokenizer files: give --tokenizer_name")
    tokenizer = load_tokenizer(tok_path, "--tokenizer_name", do_lower_case=True if args.do_lower_case else None)
    config = read_folder_config(args.model_name_or_path) if args.config_name is None else None
    labels = label_order(task, config if (config is not None and is_classifier_config(config)) else None)

    collate = glue_collate(tokenizer)
    train_items = None
    if args.do_train:
        examples = load_split(args.data_dir, task, "train", aug_train=args.aug_train, max_examples=args.max_train_examples)
        train_items = encode(examples, tokenizer, task, labels, args.max_seq_length)
    sets = eval_sets(task_key, task, args.data_dir, tokenizer, labels, args.max_seq_length, args.max_eval_examples) \
        if (args.do_eval or (args.do_train and args.evaluate_during_training)) else {}

    rt = Runtime(args)  # after the data is read and checked; before the model (seeds its new head)
    model = load_classifier(args.model_name_or_path, task, labels, "--model_name_or_path", args.config_name, tokenizer)

    if args.do_train:
        def evaluate_fn(objective, step):
            return evaluate_all(objective.model, sets, task, collate, args.per_gpu_eval_batch_size, rt.device)

        train_task(rt, args, model, train_items, tokenizer, collate_fn=collate,
                   loss_fn=lambda logits, gold: task_loss(logits, gold, task),
                   evaluate_fn=evaluate_fn if args.evaluate_during_training else None,
                   eval_steps=args.logging_steps if args.evaluate_during_training else 0,
                   metric_for_best=task.metric if args.evaluate_during_training else None)
        model = load_classifier(args.output_dir, task, labels, "--output_dir", tokenizer=tokenizer)  # what was saved
    model = model.to(rt.device)
    final = {}
    if rt.is_main:
        if args.do_eval:
            final = evaluate_all(model, sets, task, collate, args.per_gpu_eval_batch_size, rt.device)
            write_results(final, args.output_dir)
            if args.eval_all_checkpoints:  # each checkpoint's results beside it; the final model's are above
                for name, ckpt in checkpoints_to_evaluate(args.output_dir, include_checkpoints=True):
                    if name == "final":
                        continue
                    m = load_classifier(ckpt, task, labels, "--output_dir", tokenizer=tokenizer).to(rt.device)
                    write_results(evaluate_all(m, sets, task, collate, args.per_gpu_eval_batch_size, rt.device), ckpt)
        if args.do_predict:
            for path in predict_test_sets(model, task_key, task, args.data_dir, tokenizer, labels, args.max_seq_length,
                                          args.output_dir, args.per_gpu_eval_batch_size, rt.device):
                logger.info("test predictions -> %s", path)
    rt.barrier()
    return final
