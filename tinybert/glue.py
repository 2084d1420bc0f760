"""GLUE tasks: readers for the official TSV layouts, label sets, the encoder (examples -> items for
`kdcore.finetune`), and the metrics each task is ranked by.

Every reader names the file and line of a bad row (too few columns, a label outside the task's set) in a
`UserError`. Files are read as UTF-8 with an optional BOM (MRPC's header has one) and without quote handling
(GLUE sentences contain unbalanced `"`), exactly like the GLUE reference readers.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np

from kdcore.cli import UserError
from kdcore.files import atomic_open, iter_text_lines
from kdcore.sentence_embeddings import spearman  # the one Spearman (also used by the STS zero-shot score)


@dataclass
class InputExample:
    guid: str
    text_a: str
    text_b: str | None
    label: str | float | None  # None for test files


@dataclass(frozen=True)
class GlueTask:
    """Where the fields of one GLUE task sit in its TSV files.

    Column indices may be negative (from the end). `test_*` describe the unlabelled test file, whose first
    column is always the example index used in the GLUE submission file.
    """

    name: str                      # canonical GLUE name, e.g. "SST-2"
    labels: tuple[str, ...] | None  # None = regression
    text_a: int
    text_b: int | None
    label: int
    has_header: bool
    test_text_a: int
    test_text_b: int | None
    dev_files: tuple[str, ...] = ("dev.tsv",)
    test_files: tuple[str, ...] = ("test.tsv",)
    metric: str = "acc"            # the metric the best checkpoint is chosen on

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)

    def min_columns(self, test: bool = False) -> int:
        cols = [self.test_text_a, self.test_text_b] if test else [self.text_a, self.text_b, self.label]
        return max((c + 1 if c >= 0 else -c) for c in cols if c is not None)


TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", ("0", "1"), 3, None, 1, False, 1, None, metric="mcc"),
    "sst-2": GlueTask("SST-2", ("0", "1"), 0, None, 1, True, 1, None),
    "mrpc": GlueTask("MRPC", ("0", "1"), 3, 4, 0, True, 3, 4),
    "sts-b": GlueTask("STS-B", None, 7, 8, -1, True, 7, 8, metric="corr"),
    "qqp": GlueTask("QQP", ("0", "1"), 3, 4, 5, True, 1, 2),
    "mnli": GlueTask("MNLI", ("contradiction", "entailment", "neutral"), 8, 9, -1, True, 8, 9,
                     dev_files=("dev_matched.tsv",), test_files=("test_matched.tsv",)),
    "mnli-mm": GlueTask("MNLI", ("contradiction", "entailment", "neutral"), 8, 9, -1, True, 8, 9,
                        dev_files=("dev_mismatched.tsv",), test_files=("test_mismatched.tsv",)),
    "qnli": GlueTask("QNLI", ("entailment", "not_entailment"), 1, 2, -1, True, 1, 2),
    "rte": GlueTask("RTE", ("entailment", "not_entailment"), 1, 2, -1, True, 1, 2),
    "wnli": GlueTask("WNLI", ("0", "1"), 1, 2, -1, True, 1, 2),
}
# The directory of each task in the GLUE download (`glue_data/<dir>`).
TASK_DIRS = {key: task.name for key, task in TASKS.items()}


def get_task(task_name: str, argname: str = "--task_name") -> GlueTask:
    key = (task_name or "").lower()
    if key == "sts":
        key = "sts-b"
    if key not in TASKS:
        raise UserError(f"{argname}: unknown task {task_name!r}; choose one of {', '.join(t.name if k != 'mnli-mm' else k for k, t in TASKS.items())}")
    return TASKS[key]


def read_tsv(path: str) -> list[tuple[int, list[str]]]:
    """Rows of a GLUE TSV as (1-based line number, fields). BOM-tolerant, no quote processing."""
    # Split by hand rather than with csv: GLUE files are unquoted, and csv.reader's line_num lags behind the line
    # that failed, so its errors named the wrong line.
    return [(line_num, line.split("\t")) for line_num, line in iter_text_lines(path, "--data_dir") if line != ""]


def _field(row: list[str], index: int) -> str:
    return row[index]


def read_examples(task: GlueTask, path: str, set_type: str, max_examples: int | None = None) -> list[InputExample]:
    """Examples of one split. `set_type` is "train", "dev" or "test" (test rows carry no label)."""
    test = set_type == "test"
    rows = read_tsv(path)
    if task.has_header or test:  # every GLUE test file has a header, CoLA's included
        rows = rows[1:]
    need = task.min_columns(test)
    examples = []
    for line_num, row in rows:
        if max_examples is not None and len(examples) >= max_examples:
            break
        if len(row) < need:
            raise UserError(f"{path}:{line_num}: expected at least {need} tab-separated columns for {task.name}, found {len(row)}")
        guid = f"{set_type}-{row[0] if test else line_num}"
        if test:
            a, b = task.test_text_a, task.test_text_b
            examples.append(InputExample(guid, _field(row, a), None if b is None else _field(row, b), None))
            continue
        raw = row[task.label].strip()
        if task.labels is None:
            try:
                label = float(raw)
            except ValueError:
                raise UserError(f"{path}:{line_num}: {task.name} score {raw!r} is not a number")
            if not math.isfinite(label):
                raise UserError(f"{path}:{line_num}: {task.name} score {raw!r} is not finite")
        else:
            if raw not in task.labels:
                raise UserError(f"{path}:{line_num}: label {raw!r} is not one of {task.name}'s labels {list(task.labels)}")
            label = raw
        examples.append(InputExample(guid, _field(row, task.text_a),
                                     None if task.text_b is None else _field(row, task.text_b), label))
    return examples


def split_file(data_dir: str, split: str, task: GlueTask, aug_train: bool = False) -> list[str]:
    """Paths of a split ("train", "dev", "test"); dev/test may be several files (MNLI has one per genre set)."""
    if split == "train":
        names = ["train_aug.tsv" if aug_train else "train.tsv"]
    elif split == "dev":
        names = list(task.dev_files)
    else:
        names = list(task.test_files)
    paths = [os.path.join(data_dir, n) for n in names]
    for p in paths:
        if not os.path.isfile(p):
            hint = " (run data_augmentation.py first, or drop --aug_train)" if aug_train and split == "train" else ""
            raise UserError(f"--data_dir {data_dir}: no {os.path.basename(p)} for {task.name}{hint}")
    return paths


def load_split(data_dir: str, task: GlueTask, split: str, aug_train: bool = False, max_examples: int | None = None):
    (path,) = split_file(data_dir, split, task, aug_train)
    return read_examples(task, path, split, max_examples)


# --------------------------------------------------------------------------------------------------------------
# Encoder
# --------------------------------------------------------------------------------------------------------------
def encode(examples: list[InputExample], tokenizer, task: GlueTask, labels: list[str] | None, max_seq_length: int,
           chunk: int = 2048) -> list[dict]:
    """One item per example: `input_ids`, `token_type_ids` (fast tokenizer, pairs truncated longest-first to
    `max_seq_length`) and, for labelled examples, `labels`: the index in `labels` (the model's output order), or
    the score itself for regression (`labels` None). Padding is `kdcore.finetune.pad_collate`'s job."""
    label_id = {lab: i for i, lab in enumerate(labels)} if labels is not None else None
    items = []
    for start in range(0, len(examples), chunk):  # tokenised in chunks: one call, bounded memory
        part = examples[start : start + chunk]
        enc = tokenizer([e.text_a for e in part], [e.text_b for e in part] if task.text_b is not None else None,
                        truncation=True, max_length=max_seq_length, return_token_type_ids=True)
        for i, e in enumerate(part):
            item = {"input_ids": enc["input_ids"][i], "token_type_ids": enc["token_type_ids"][i]}
            if e.label is not None:
                item["labels"] = float(e.label) if label_id is None else label_id[e.label]
            items.append(item)
    return items


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------
# scikit-learn and scipy compute them, as GLUE's reference code (and HF's glue_compute_metrics) does.
def accuracy(preds, labels) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(np.asarray(labels), np.asarray(preds)))


def f1_binary(preds, labels, positive=1) -> float:
    """F1 of the positive class: 2TP / (2TP + FP + FN) (0 when there is no positive anywhere)."""
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(labels), np.asarray(preds), pos_label=positive, zero_division=0.0))


def matthews_corrcoef(preds, labels) -> float:
    """MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)); 0 when a marginal is empty."""
    import warnings

    from sklearn.metrics import matthews_corrcoef as mcc

    with warnings.catch_warnings():  # one class only in a tiny eval set: sklearn warns, and returns 0 as stated
        warnings.simplefilter("ignore", UserWarning)
        return float(mcc(np.asarray(labels), np.asarray(preds)))


def _constant(x) -> bool:
    x = np.asarray(x, dtype=np.float64)
    return len(x) < 2 or bool(np.all(x == x[0]))


def pearson(x, y) -> float:
    """Pearson's r (scipy); 0 when either side is constant (scipy would return NaN with a warning)."""
    from scipy.stats import pearsonr

    if _constant(x) or _constant(y):
        return 0.0
    return float(pearsonr(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))[0])


def compute_metrics(task: GlueTask, preds, labels) -> dict[str, float]:
    """GLUE metrics. Classification: `preds`/`labels` are label ids; regression: scores."""
    key = task.name
    if task.labels is None:
        p, s = pearson(preds, labels), spearman(preds, labels)
        return {"pearson": p, "spearmanr": s, "corr": (p + s) / 2}
    if key == "CoLA":
        return {"mcc": matthews_corrcoef(preds, labels)}
    acc = accuracy(preds, labels)
    if key in ("MRPC", "QQP"):
        f1 = f1_binary(preds, labels)
        return {"acc": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    return {"acc": acc}


# --------------------------------------------------------------------------------------------------------------
# Label order
# --------------------------------------------------------------------------------------------------------------
def label_order(task: GlueTask, config=None) -> list[str] | None:
    """The label list in the order of the model's output units.

    A fine-tuned model whose config names its labels (`id2label` other than HF's LABEL_i placeholders) fixes the
    order (HF-fine-tuned MNLI models use entailment/neutral/contradiction, not GLUE's alphabetical order). Names
    are matched case-insensitively; a model whose labels are a different set is an error.
    """
    if task.labels is None:
        return None
    id2label = getattr(config, "id2label", None) if config is not None else None
    if not id2label:
        return list(task.labels)
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if all(n.upper() == f"LABEL_{i}" for i, n in enumerate(names)):
        return list(task.labels)
    lower = {lab.lower(): lab for lab in task.labels}
    if len(names) != len(task.labels) or any(n.lower() not in lower for n in names):
        raise UserError(
            f"the model's labels {names} are not {task.name}'s labels {list(task.labels)}; "
            "was it fine-tuned on another task?"
        )
    return [lower[n.lower()] for n in names]


# --------------------------------------------------------------------------------------------------------------
# Held-out selection slice
# --------------------------------------------------------------------------------------------------------------
def write_heldout_split(data_dir: str, task: GlueTask, out_dir: str, heldout_fraction: float, seed: int = 0) -> dict:
    """Split a task's train.tsv into a selection folder: OUT/train.tsv (the rest) and OUT/dev.tsv (a held-out
    slice of `heldout_fraction` of the training rows, chosen by a seeded permutation, kept in file order).

    Hyperparameters (epochs, learning rate, temperature, ...) are chosen by training on OUT/train.tsv and scoring
    on OUT/dev.tsv, so the real dev set is read only to report. Rows are copied byte for byte (header kept), and
    every row is first checked by the task's reader. An existing folder with the same split is reused; one with
    other content is an error, never overwritten."""
    if not 0.0 < heldout_fraction < 1.0:
        raise UserError(f"--heldout_fraction {heldout_fraction}: must be between 0 and 1 (exclusive)")
    (train_path,) = split_file(data_dir, "train", task)
    read_examples(task, train_path, "train")  # every row valid before anything is written
    rows = read_tsv(train_path)
    header, body = (rows[:1], rows[1:]) if task.has_header else ([], rows)
    n_heldout = max(1, round(heldout_fraction * len(body)))
    if n_heldout >= len(body):
        raise UserError(f"--heldout_fraction {heldout_fraction}: leaves no training rows of {len(body)} in {train_path}")
    chosen = set(np.random.default_rng(seed).permutation(len(body))[:n_heldout].tolist())
    head = ["\t".join(r) for _, r in header]
    parts = {"train.tsv": head + ["\t".join(r) for i, (_, r) in enumerate(body) if i not in chosen],
             "dev.tsv": head + ["\t".join(r) for i, (_, r) in enumerate(body) if i in chosen]}
    os.makedirs(out_dir, exist_ok=True)
    for name, lines in parts.items():
        text = "\n".join(lines) + "\n"
        path = os.path.join(out_dir, name)
        if os.path.isfile(path):
            with open(path, "rb") as f:  # compared as bytes: whatever is there, it is the same split or not
                if f.read() != text.encode("utf-8"):
                    raise UserError(f"{path}: exists with another split (other source, fraction or seed); "
                                    f"remove it or choose another folder")
            continue
        with atomic_open(path) as f:
            f.write(text)
    return {"source": train_path, "train_rows": len(body) - n_heldout, "heldout_rows": n_heldout,
            "heldout_fraction": heldout_fraction, "seed": seed}
