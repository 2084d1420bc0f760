"""Sequence classification / regression on GLUE: features, batches, evaluation, predictions, and plain
fine-tuning (`run_glue.py`). Task distillation (`tinybert/task_distill.py`) reuses all of it.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kdcore import model_card
from kdcore.batching import pad_batch
from kdcore.cli import UserError, ensure_writable_dir
from kdcore.finetune import predict_batches
from kdcore.modeling import atomic_write_json, check_vocab, load_model
from tinybert.glue import GlueTask, InputExample, compute_metrics, label_order, load_split

logger = logging.getLogger("kd.glue")

TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "sentencepiece.bpe.model", "spiece.model")


# --------------------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------------------
class GlueDataset(torch.utils.data.Dataset):
    """Tokenized examples (fast tokenizer, pairs truncated longest-first to `max_seq_length`)."""

    def __init__(self, examples: list[InputExample], tokenizer, task: GlueTask, labels: list[str] | None,
                 max_seq_length: int, batch: int = 2048):
        self.examples = examples
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        label_map = {lab: i for i, lab in enumerate(labels)} if labels is not None else None
        self.features = []
        for start in range(0, len(examples), batch):
            chunk = examples[start : start + batch]
            a = [e.text_a for e in chunk]
            b = [e.text_b for e in chunk] if task.text_b is not None else None
            enc = tokenizer(a, b, truncation=True, max_length=max_seq_length, return_token_type_ids=True)
            for i, e in enumerate(chunk):
                if e.label is None:
                    label = None
                elif label_map is None:
                    label = float(e.label)
                else:
                    label = label_map[e.label]
                self.features.append((enc["input_ids"][i], enc["token_type_ids"][i], label))

    def __len__(self):
        return len(self.features)

    def __getitem__(self, idx):
        return self.features[idx]

    def collate(self, items) -> dict[str, torch.Tensor]:
        """Pad to the longest sequence of the batch."""
        batch = pad_batch([i for i, _, _ in items], [t for _, t, _ in items], self.pad_id)
        labels = [lab for _, _, lab in items]
        if all(lab is not None for lab in labels):
            dtype = torch.float32 if isinstance(labels[0], float) else torch.long
            batch["labels"] = torch.tensor(labels, dtype=dtype)
        return batch


def model_inputs(batch: dict) -> dict:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


def task_loss(logits: torch.Tensor, labels: torch.Tensor, task: GlueTask) -> torch.Tensor:
    """Gold-label loss: cross-entropy (classification) or MSE (regression, STS-B)."""
    if task.labels is None:
        return F.mse_loss(logits.float().view(-1), labels.float().view(-1))
    return F.cross_entropy(logits.float(), labels)


# --------------------------------------------------------------------------------------------------------------
# Evaluation and predictions
# --------------------------------------------------------------------------------------------------------------
def predict_logits(model: nn.Module, dataset: GlueDataset, batch_size: int, device, autocast=None) -> np.ndarray:
    out = predict_batches(model, dataset, dataset.collate, batch_size, device,
                          lambda model, batch: model(**model_inputs(batch)).logits.float().cpu().numpy(), autocast)
    return np.concatenate(out, axis=0) if out else np.zeros((0, 1), dtype=np.float32)


def evaluate(model: nn.Module, dataset: GlueDataset, task: GlueTask, batch_size: int, device, autocast=None) -> dict:
    """GLUE metrics of `model` on a labelled dataset, plus `eval_loss` (CE or MSE against the gold labels)."""
    logits = predict_logits(model, dataset, batch_size, device, autocast)
    gold = np.asarray([lab for _, _, lab in dataset.features])
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


def write_predictions(model, dataset: GlueDataset, task: GlueTask, labels: list[str] | None, path: str,
                      batch_size: int, device) -> None:
    """GLUE submission file: `index<TAB>prediction` (a label name, or a score for STS-B)."""
    logits = predict_logits(model, dataset, batch_size, device)
    lines = ["index\tprediction"]
    for example, row in zip(dataset.examples, logits):
        index = example.guid.split("-", 1)[1]
        value = f"{float(row[0]):.3f}" if labels is None else labels[int(row.argmax())]
        lines.append(f"{index}\t{value}")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, path)


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

        try:
            return AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: cannot read config.json ({err})")
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
              max_examples: int | None) -> dict[str, GlueDataset]:
    """Dev sets to evaluate: the task's dev set, and for MNLI the mismatched one too (prefix "mm_")."""
    from tinybert.glue import TASKS

    sets = {"": GlueDataset(load_split(data_dir, task, "dev", max_examples=max_examples), tokenizer, task, labels, max_seq_length)}
    if task_key == "mnli":
        mm = TASKS["mnli-mm"]
        sets["mm_"] = GlueDataset(load_split(data_dir, mm, "dev", max_examples=max_examples), tokenizer, mm, labels, max_seq_length)
    return sets


def evaluate_all(model, sets: dict[str, GlueDataset], task: GlueTask, batch_size: int, device, autocast=None) -> dict:
    result = {}
    for prefix, dataset in sets.items():
        for k, v in evaluate(model, dataset, task, batch_size, device, autocast).items():
            result[prefix + k] = v
    return result


def predict_test_sets(model, task_key: str, task: GlueTask, data_dir: str, tokenizer, labels, max_seq_length: int,
                      output_dir: str, batch_size: int, device) -> list[str]:
    from tinybert.glue import TASKS

    written = []
    keys = [task_key] + (["mnli-mm"] if task_key == "mnli" else [])
    for key in keys:
        t = TASKS[key]
        dataset = GlueDataset(load_split(data_dir, t, "test"), tokenizer, t, labels, max_seq_length)
        path = os.path.join(output_dir, submission_name(key, t))
        write_predictions(model, dataset, t, labels, path, batch_size, device)
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
    from kdcore.finetune import checkpoints_to_evaluate, train_task
    from kdcore.modeling import load_tokenizer
    from kdcore.runtime import Runtime
    from tinybert.glue import get_task

    task = get_task(args.task_name)
    task_key = args.task_name.lower()
    if not (args.do_train or args.do_eval or args.do_predict):
        raise UserError("nothing to do: give --do_train, --do_eval and/or --do_predict")
    if not os.path.isdir(args.data_dir):
        raise UserError(f"--data_dir: no such folder: {args.data_dir}")
    ensure_writable_dir(args.output_dir)
    rt = Runtime(args)
    tok_path = args.tokenizer_name or (args.model_name_or_path if has_tokenizer(args.model_name_or_path) else None)
    if tok_path is None:
        raise UserError(f"--model_name_or_path {args.model_name_or_path} has no tokenizer files: give --tokenizer_name")
    tokenizer = load_tokenizer(tok_path, "--tokenizer_name", do_lower_case=True if args.do_lower_case else None)
    config = read_folder_config(args.model_name_or_path) if args.config_name is None else None
    labels = label_order(task, config if (config is not None and is_classifier_config(config)) else None)

    train_set = None
    if args.do_train:
        examples = load_split(args.data_dir, task, "train", aug_train=args.aug_train, max_examples=args.max_train_examples)
        train_set = GlueDataset(examples, tokenizer, task, labels, args.max_seq_length)
    sets = eval_sets(task_key, task, args.data_dir, tokenizer, labels, args.max_seq_length, args.max_eval_examples) \
        if (args.do_eval or (args.do_train and args.evaluate_during_training)) else {}

    model = load_classifier(args.model_name_or_path, task, labels, "--model_name_or_path", args.config_name, tokenizer)

    if args.do_train:
        evaluate_fn = None
        if args.evaluate_during_training:
            def evaluate_fn(objective, step):
                return evaluate_all(objective.model, sets, task, args.per_gpu_eval_batch_size, rt.device)
        train_task(rt, args, model, train_set, tokenizer, collate_fn=train_set.collate,
                   loss_fn=lambda logits, gold: task_loss(logits, gold, task), evaluate_fn=evaluate_fn,
                   eval_steps=args.logging_steps if args.evaluate_during_training else 0,
                   metric_for_best=task.metric if args.evaluate_during_training else None)
        model = load_classifier(args.output_dir, task, labels, "--output_dir", tokenizer=tokenizer)  # what was saved
    model = model.to(rt.device)
    final = {}
    if rt.is_main:
        if args.do_eval:
            final = evaluate_all(model, sets, task, args.per_gpu_eval_batch_size, rt.device)
            write_results(final, args.output_dir)
            if args.eval_all_checkpoints:  # each checkpoint's results beside it; the final model's are above
                for name, ckpt in checkpoints_to_evaluate(args.output_dir, include_checkpoints=True):
                    if name == "final":
                        continue
                    m = load_classifier(ckpt, task, labels, "--output_dir", tokenizer=tokenizer).to(rt.device)
                    write_results(evaluate_all(m, sets, task, args.per_gpu_eval_batch_size, rt.device), ckpt)
        if args.do_predict:
            for path in predict_test_sets(model, task_key, task, args.data_dir, tokenizer, labels, args.max_seq_length,
                                          args.output_dir, args.per_gpu_eval_batch_size, rt.device):
                logger.info("test predictions -> %s", path)
    rt.barrier()
    return final
