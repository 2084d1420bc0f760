"""XNLI: reading the standard layout, features, per-language accuracy, checkpoint selection on the joint dev set.

Layout under --data_dir (as distributed):
  XNLI-MT-1.0/multinli/multinli.train.{lang}.tsv   header `premise hypo label`, machine-translated MNLI train
  XNLI-1.0/xnli.{dev,test}.tsv                      header with `language gold_label ... sentence1 sentence2 ...`

Every language present in the dev (and test) file is evaluated. Accuracy is in percent; `average` is the mean of
the per-language accuracies (the number the MiniLM / XLM-R tables report), `joint` the accuracy over all rows of
all languages together (the joint dev set on which the best checkpoint is selected, following Conneau et al.
2019; the original MiniLM script selected on test).

Bad rows: a row with the wrong number of fields, a header without the expected columns, an unknown label, or a
file with no row is a UserError naming file and line (a damaged file is never silently trained on in part).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from kdcore import model_card
from kdcore.cli import UserError, ensure_writable_dir
from kdcore.files import atomic_write_json, iter_text_lines
from kdcore.finetune import (
    check_max_seq_length, load_task_model, load_task_tokenizer, models_to_evaluate, pad_collate, predict_batches,
    train_task,
)
from kdcore.modeling import check_length_fits
from kdcore.runtime import Runtime
from kdcore.families import MODEL_TYPES

logger = logging.getLogger("kd")

LABELS = ["contradiction", "entailment", "neutral"]  # the HF / MiniLM XNLI processor's label order
LABEL_ALIASES = {"contradictory": "contradiction"}  # spelling used by some XNLI-MT training files
TRAIN_HEADER = ["premise", "hypo", "label"]
EVAL_COLUMNS = ("language", "gold_label", "sentence1", "sentence2")


@dataclass
class NliExamples:
    premises: list = field(default_factory=list)
    hypotheses: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    languages: list = field(default_factory=list)
    skipped: int = 0

    def __len__(self):
        return len(self.labels)

    def add(self, premise, hypothesis, label, language):
        self.premises.append(premise)
        self.hypotheses.append(hypothesis)
        self.labels.append(label)
        self.languages.append(language)


def _label_id(raw: str, path: str, line_no: int) -> int:
    label = LABEL_ALIASES.get(raw.strip(), raw.strip())
    if label not in LABELS:
        raise UserError(f"{path}:{line_no}: unknown label {raw!r} (expected one of {', '.join(LABELS)})")
    return LABELS.index(label)


def _lines(path: str, argname: str):
    for line_no, line in iter_text_lines(path, argname):
        if line.strip():
            yield line_no, line.split("\t")


def _header(rows, path: str, argname: str) -> tuple[int, list[str]]:
    header = next(rows, None)
    if header is None:
        raise UserError(f"{argname}: {path} is empty")
    line_no, fields = header
    return line_no, [f.strip() for f in fields]


def _finish(examples: NliExamples, bad_lines: list, path: str, argname: str, width: int) -> NliExamples:
    if bad_lines:
        line_no, found = bad_lines[0]
        more = f" (and {len(bad_lines) - 1} more rows)" if len(bad_lines) > 1 else ""
        raise UserError(f"{path}:{line_no}: expected {width} tab-separated fields, found {found}{more}")
    if not len(examples):
        raise UserError(f"{argname} {path}: no usable rows")
    return examples


def read_train_file(path: str, language: str, max_examples: int | None = None) -> NliExamples:
    """multinli.train.{lang}.tsv: header `premise hypo label`, then one pair a line."""
    examples, bad = NliExamples(), []
    rows = _lines(path, "--language/--train_language")
    line_no, fields = _header(rows, path, "--language/--train_language")
    if fields != TRAIN_HEADER:
        raise UserError(f"{path}:{line_no}: expected the header '{' '.join(TRAIN_HEADER)}' (tab-separated), "
                        f"got {' | '.join(fields)[:200]!r}")
    for line_no, fields in rows:
        if max_examples is not None and len(examples) >= max_examples:
            break
        if len(fields) != 3:
            bad.append((line_no, len(fields)))
            continue
        examples.add(fields[0], fields[1], _label_id(fields[2], path, line_no), language)
    return _finish(examples, bad, path, "--language/--train_language", 3)


def read_eval_file(path: str, max_examples_per_language: int | None = None) -> NliExamples:
    """xnli.{dev,test}.tsv: columns found by name in the header (language, gold_label, sentence1, sentence2)."""
    examples, bad = NliExamples(), []
    rows = _lines(path, "--data_dir")
    line_no, names = _header(rows, path, "--data_dir")
    missing = [c for c in EVAL_COLUMNS if c not in names]
    if missing:
        raise UserError(f"{path}:{line_no}: header lacks the column(s) {', '.join(missing)} "
                        f"(an XNLI-1.0 file has {', '.join(EVAL_COLUMNS)} among its 19 columns)")
    col = {c: names.index(c) for c in EVAL_COLUMNS}
    width = max(col.values()) + 1
    per_language: dict[str, int] = {}
    for line_no, fields in rows:
        if len(fields) < width:
            bad.append((line_no, len(fields)))
            continue
        lang = fields[col["language"]].strip()
        if max_examples_per_language is not None and per_language.get(lang, 0) >= max_examples_per_language:
            continue
        per_language[lang] = per_language.get(lang, 0) + 1
        examples.add(fields[col["sentence1"]], fields[col["sentence2"]],
                     _label_id(fields[col["gold_label"]], path, line_no), lang)
    return _finish(examples, bad, path, "--data_dir", width)


def encode(examples: NliExamples, tokenizer, max_seq_length: int, use_token_type_ids: bool) -> list[dict]:
    """Tokenise premise/hypothesis pairs (longest-first truncation to max_seq_length), one item per pair."""
    enc = tokenizer(examples.premises, examples.hypotheses, truncation=True, max_length=max_seq_length,
                    return_token_type_ids=use_token_type_ids)
    items = []
    for i in range(len(examples)):
        item = {"input_ids": enc["input_ids"][i], "labels": examples.labels[i]}
        if use_token_type_ids:
            item["token_type_ids"] = enc["token_type_ids"][i]
        items.append(item)
    return items


def predict(model, items: list[dict], collate_fn, batch_size: int, device, autocast) -> np.ndarray:
    """Predicted label ids, in item order."""
    unlabelled = [{k: v for k, v in it.items() if k != "labels"} for it in items]
    out = predict_batches(model, unlabelled, collate_fn, batch_size, device,
                          lambda model, batch: model(**batch).logits.float().argmax(-1).cpu().numpy(), autocast)
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def accuracy_by_language(predictions: np.ndarray, examples: NliExamples) -> dict:
    """{lang: accuracy %} for every language (sorted), plus `average` (mean over languages) and `joint`
    (accuracy over all rows)."""
    gold = np.asarray(examples.labels)
    langs = np.asarray(examples.languages)
    correct = predictions == gold
    out = {lang: 100.0 * float(correct[langs == lang].mean()) for lang in sorted(set(examples.languages))}
    per_lang = list(out.values())
    out["average"] = float(np.mean(per_lang))
    out["joint"] = 100.0 * float(correct.mean())
    return out


def select_checkpoint(dev_results: dict) -> str:
    """The name whose `joint` dev accuracy (all languages' rows together) is highest; the earliest on ties."""
    if not dev_results:
        raise ValueError("no evaluated checkpoint")
    return max(dev_results, key=lambda name: dev_results[name]["joint"])  # max keeps the first of equal keys


# ----------------------------------------------------------------------------------------------------------------
# The run_xnli.py workflow
# ----------------------------------------------------------------------------------------------------------------
def train_path(data_dir: str, language: str) -> str:
    return os.path.join(data_dir, "XNLI-MT-1.0", "multinli", f"multinli.train.{language}.tsv")


def eval_path(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, "XNLI-1.0", f"xnli.{split}.tsv")


def run(args) -> dict | None:
    from transformers import AutoModelForSequenceClassification

    model_card.describe_run("fine-tuning", ["fine-tuning"], datasets=["xnli"], pipeline_tag="text-classification")
    if not (args.do_train or args.do_eval):
        raise UserError("nothing to do: pass --do_train and/or --do_eval")
    for name in ("per_gpu_train_batch_size", "per_gpu_eval_batch_size", "max_seq_length"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not os.path.isdir(args.data_dir):
        raise UserError(f"--data_dir: no such folder: {args.data_dir}")
    check_length_fits(args.config_name or args.model_name_or_path, args.max_seq_length, "--max_seq_length",
                      "--config_name" if args.config_name else "--model_name_or_path")
    train_language = args.train_language or args.language
    # Read (and validate) every data file before loading a model or training.
    examples = dev = test = None
    if args.do_train:
        examples = read_train_file(train_path(args.data_dir, train_language), train_language, args.max_train_examples)
    if args.do_eval:
        dev = read_eval_file(eval_path(args.data_dir, "dev"), args.max_eval_examples)
        if os.path.isfile(eval_path(args.data_dir, "test")):
            test = read_eval_file(eval_path(args.data_dir, "test"), args.max_eval_examples)
    ensure_writable_dir(args.output_dir)
    rt = Runtime(args)
    tokenizer = load_task_tokenizer(args)
    use_types = MODEL_TYPES[args.model_type].token_type_ids
    model = load_task_model(args, AutoModelForSequenceClassification, tokenizer, num_labels=len(LABELS))
    check_max_seq_length(model.config, args.max_seq_length)
    collate = lambda items: pad_collate(items, tokenizer.pad_token_id)  # noqa: E731

    if args.do_train:
        logger.info("training on %d %s pairs (%d rows skipped)", len(examples), train_language, examples.skipped)
        train_task(rt, args, model, encode(examples, tokenizer, args.max_seq_length, use_types), tokenizer)

    if not args.do_eval or not rt.is_main:
        rt.barrier()
        return None
    dev_items = encode(dev, tokenizer, args.max_seq_length, use_types)
    targets = models_to_evaluate(args)
    dev_results = {}
    for name, folder in targets:
        m = model if folder is None else load_task_model(args, AutoModelForSequenceClassification, tokenizer,
                                                         path=folder, num_labels=len(LABELS))
        m = m.to(rt.device)
        dev_results[name] = accuracy_by_language(
            predict(m, dev_items, collate, args.per_gpu_eval_batch_size, rt.device, rt.autocast), dev)
        logger.info("dev %s: %s", name, dev_results[name])
    name = select_checkpoint(dev_results)
    folder = dict(targets)[name]
    report = {
        "selection": "best joint dev accuracy over all dev languages",
        "languages": sorted(set(dev.languages)),
        "train_language": train_language if args.do_train else None,
        "selected": name,
        "selected_path": folder or args.model_name_or_path,
        "dev": dev_results[name],
        "test": None,
        "reported_split": "dev",
        "accuracy": dev_results[name],
        "num_dev_examples": len(dev),
        "dev_rows_skipped": dev.skipped,
        "checkpoints_dev": dev_results,
    }
    if test is not None:
        m = model if folder is None else load_task_model(args, AutoModelForSequenceClassification, tokenizer,
                                                         path=folder, num_labels=len(LABELS))
        m = m.to(rt.device)
        test_items = encode(test, tokenizer, args.max_seq_length, use_types)
        report["test"] = accuracy_by_language(
            predict(m, test_items, collate, args.per_gpu_eval_batch_size, rt.device, rt.autocast), test)
        report.update(reported_split="test", accuracy=report["test"], num_test_examples=len(test),
                      test_rows_skipped=test.skipped)
        logger.info("test %s: %s", name, report["test"])
    else:
        report["note"] = (f"no {eval_path(args.data_dir, 'test')}: test not evaluated; the accuracy reported is "
                          "on dev (the set the checkpoint was selected on)")
        logger.warning(report["note"])
    atomic_write_json(report, os.path.join(args.output_dir, "eval_results.json"))
    model_card.note_results(report, args.output_dir)
    rt.barrier()
    return report
