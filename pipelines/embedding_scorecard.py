"""Offline scorecard of sentence-embedding folders (`eval_embeddings.py`): one row per model, five tasks, the encoder
never trained on any of them.

| column | data (under `--data_dir`) | score (x100) |
|---|---|---|
| STS-B | `glue/STS-B/dev.tsv` (1,500 pairs) | Spearman of cos(e_a, e_b) against the gold score (as `eval_sts.py`) |
| MRPC AP | `glue/MRPC/dev.tsv` (the labelled MSR test split, 1,725 pairs) | average precision of cos(e_a, e_b) against the paraphrase label: no training, no threshold |
| SQuAD NDCG@10, MRR@10 | `squad/dev-v1.1.json` | every question ranks every (deduplicated) dev paragraph by cosine; its one relevant paragraph is its own |
| SST-2 acc, CoLA MCC | `glue/{SST-2,CoLA}/{train,dev}.tsv` | a linear probe on the frozen embeddings: trained on train.tsv, scored on dev.tsv |
| average | | mean of the five headline numbers STS-B, MRPC AP, SQuAD NDCG@10, SST-2 acc, CoLA MCC: one per task (MRR@10 is shown beside NDCG@10 but not averaged, so that retrieval counts once) |

Linear probe: features standardised with the mean and spread of the probe's training sentences, then scikit-learn's
LogisticRegression (lbfgs, max_iter 5000, random_state = --seed). Training sentences: at most
--probe_train_examples of train.tsv (default 10,000, so all 6,920 of SST-2 and 8,551 of CoLA here), drawn with the
seed. C: --probe_c when given; else the best of PROBE_C_GRID on 20 % of those training sentences held out (seeded;
best by the task's own metric, the smaller C on a tie), and the probe is refitted on all of them with that C. The
dev file is only ever scored.

Sequence lengths: --max_seq_length (128) tokens for sentences and questions (no sentence of these files is
longer), --paragraph_max_seq_length (256) for paragraphs: all-MiniLM-L6-v2's own limit (its
sentence_bert_config.json says 256); 188 of the 199 SQuAD dev paragraphs fit whole (58 would at 128). Each model
encodes each distinct text once, longest first in batches of similar length (little padding), and the rows are
put back in order.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from kdcore.cli import UserError
from kdcore.files import atomic_write_json, atomic_write_text
from kdcore.modeling import check_length_fits
from kdcore.onnx_export import load_onnx_encoder
from kdcore.sentence_embeddings import encode, load_embedding_folder, read_pooling, read_sts, spearman
from kdcore.static_token_embedding import is_static_folder
from minilm.squad import read_squad_file
from tinybert.glue import accuracy, get_task, matthews_corrcoef, read_examples

logger = logging.getLogger("kd.scorecard")

PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)
PROBE_HELDOUT_FRACTION = 0.2
RETRIEVAL_K = 10
# key -> (column title, what it is)
COLUMNS = {
    "sts_b_spearman": ("STS-B", "STS-B dev: Spearman x100 of cos(e_a, e_b) against the gold score"),
    "mrpc_ap": ("MRPC AP", "MRPC dev: average precision x100 of cos(e_a, e_b) against the paraphrase label"),
    "squad_ndcg@10": ("SQuAD NDCG@10", "SQuAD v1.1 dev question -> paragraph retrieval, NDCG@10 x100"),
    "squad_mrr@10": ("SQuAD MRR@10", "SQuAD v1.1 dev question -> paragraph retrieval, MRR@10 x100"),
    "sst2_acc": ("SST-2 acc", "SST-2 dev accuracy x100 of a linear probe trained on train.tsv"),
    "cola_mcc": ("CoLA MCC", "CoLA dev Matthews correlation x100 of a linear probe trained on train.tsv"),
}
AVERAGE_OF = ("sts_b_spearman", "mrpc_ap", "squad_ndcg@10", "sst2_acc", "cola_mcc")


# --------------------------------------------------------------------------------------------------------------
# Metrics (pure functions)
# --------------------------------------------------------------------------------------------------------------
def dcg_at_k(gains, k: int) -> float:
    """DCG@k = sum_{i=1}^{min(k, n)} g_i / log2(i + 1), g_i the gain of the document ranked i-th (linear gain)."""
    g = np.asarray(gains, dtype=np.float64)[:k]
    return float((g / np.log2(np.arange(2, len(g) + 2))).sum())


def ndcg_at_k(ranked_gains, k: int, all_gains=None) -> float:
    """NDCG@k = DCG@k(the ranking) / DCG@k(the ideal ranking).

    `ranked_gains`: the gains of the documents in ranked order; `all_gains`: the gains of every document of the
    collection (default: `ranked_gains`), whose decreasing order is the ideal ranking. 0 when no document has a
    gain (IDCG = 0)."""
    ideal = sorted(np.asarray(ranked_gains if all_gains is None else all_gains, dtype=np.float64), reverse=True)
    idcg = dcg_at_k(ideal, k)
    return dcg_at_k(ranked_gains, k) / idcg if idcg > 0 else 0.0


def reciprocal_rank_at_k(ranked_relevant, k: int) -> float:
    """RR@k = 1 / i for the first relevant document at rank i <= k, else 0 (MRR@k is its mean over queries)."""
    for i, relevant in enumerate(list(ranked_relevant)[:k], 1):
        if relevant:
            return 1.0 / i
    return 0.0


def retrieval_scores(similarity: np.ndarray, relevant: np.ndarray, k: int = RETRIEVAL_K) -> dict:
    """Mean NDCG@k and MRR@k (x100) over queries with one relevant document each.

    `similarity` (Q, D): query-document scores; `relevant` (Q,): the column of each query's relevant document.
    Documents rank by decreasing score, ties by column."""
    order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
    hits = order == np.asarray(relevant)[:, None]
    ndcg = [ndcg_at_k(h.astype(np.float64), k, all_gains=[1.0]) for h in hits]
    mrr = [reciprocal_rank_at_k(h, k) for h in hits]
    return {f"ndcg@{k}": 100.0 * float(np.mean(ndcg)), f"mrr@{k}": 100.0 * float(np.mean(mrr))}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for every row i (0 for a zero vector)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)).clip(1e-12)


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True).clip(1e-12)


def average_precision(scores, labels) -> float:
    """Average precision of ranking by `scores` against binary `labels` (scikit-learn):
    AP = sum_n (R_n - R_{n-1}) P_n over the score thresholds n (precision P_n, recall R_n)."""
    from sklearn.metrics import average_precision_score  # scikit-learn: imported where used

    return float(average_precision_score(np.asarray(labels), np.asarray(scores, dtype=np.float64)))


PROBE_METRICS = {"acc": accuracy, "mcc": matthews_corrcoef}


def _fit_probe(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression  # scikit-learn: imported where used
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed)).fit(x, y)


def linear_probe(train_x, train_y, dev_x, dev_y, metric: str, seed: int, c: float | None = None) -> dict:
    """{"score": 100 * metric(dev), "C": the C used, "selection": {C: held-out score}} of a logistic-regression
    probe (module docstring); `c` None: chosen on a held-out slice of the training rows, never on dev."""
    score = PROBE_METRICS[metric]
    train_x, train_y = np.asarray(train_x), np.asarray(train_y)
    selection = {}
    if c is None:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(len(train_y))
        n_held = max(1, int(round(PROBE_HELDOUT_FRACTION * len(train_y))))
        held, fit = perm[:n_held], perm[n_held:]
        if len(np.unique(train_y[fit])) < 2:
            raise UserError(f"the probe's training slice holds one label only ({len(fit)} rows): raise "
                            f"--max_examples / --probe_train_examples or give --probe_c")
        for candidate in PROBE_C_GRID:
            probe = _fit_probe(train_x[fit], train_y[fit], candidate, seed)
            selection[candidate] = 100.0 * score(probe.predict(train_x[held]), train_y[held])
        c = max(PROBE_C_GRID, key=lambda v: (selection[v], -v))
    probe = _fit_probe(train_x, train_y, c, seed)
    return {"score": 100.0 * score(probe.predict(np.asarray(dev_x)), np.asarray(dev_y)), "C": c,
            "selection": {str(k): v for k, v in selection.items()}}


# --------------------------------------------------------------------------------------------------------------
# Data: read and checked once, before any model loads
# --------------------------------------------------------------------------------------------------------------
@dataclass
class ProbeTask:
    name: str
    metric: str
    train_texts: list
    train_labels: np.ndarray
    dev_texts: list
    dev_labels: np.ndarray


@dataclass
class ScorecardData:
    sts: tuple  # (sentences a, sentences b, gold scores)
    mrpc: tuple  # (sentences a, sentences b, labels 0/1)
    questions: list
    relevant: np.ndarray  # (Q,) index of each question's paragraph in `paragraphs`
    paragraphs: list
    probes: list = field(default_factory=list)
    files: dict = field(default_factory=dict)


def data_files(data_dir: str) -> dict:
    """The files the scorecard reads under `data_dir`; a missing one is a UserError naming it."""
    if not os.path.isdir(data_dir):
        raise UserError(f"--data_dir: no such folder: {data_dir}")
    files = {"sts_b": ("glue", "STS-B", "dev.tsv"), "mrpc": ("glue", "MRPC", "dev.tsv"),
             "squad": ("squad", "dev-v1.1.json"),
             "sst2_train": ("glue", "SST-2", "train.tsv"), "sst2_dev": ("glue", "SST-2", "dev.tsv"),
             "cola_train": ("glue", "CoLA", "train.tsv"), "cola_dev": ("glue", "CoLA", "dev.tsv")}
    paths = {k: os.path.join(data_dir, *parts) for k, parts in files.items()}
    for path in paths.values():
        if not os.path.isfile(path):
            raise UserError(f"--data_dir {data_dir}: no {os.path.relpath(path, data_dir)}")
    return paths


def _both_labels(labels: np.ndarray, path: str, what: str) -> None:
    if len(np.unique(labels)) < 2:
        raise UserError(f"{path}: the {len(labels)} examples read hold one label only; {what} needs both "
                        f"(raise --max_examples)")


def _labelled(task_name: str, path: str, split: str, max_examples: int | None):
    examples = read_examples(get_task(task_name), path, split, max_examples)
    if not examples:
        raise UserError(f"{path}: no examples")
    return examples, np.asarray([int(e.label) for e in examples], dtype=np.int64)


def load_scorecard_data(data_dir: str, max_examples: int | None = None, probe_train_examples: int = 10000,
                        seed: int = 42) -> ScorecardData:
    """Every evaluation set, checked (UTF-8, columns, labels, finite scores); `max_examples` caps each file."""
    paths = data_files(data_dir)
    a, b, gold = read_sts(paths["sts_b"])
    if max_examples:
        a, b, gold = a[:max_examples], b[:max_examples], gold[:max_examples]
    mrpc, mrpc_labels = _labelled("MRPC", paths["mrpc"], "dev", max_examples)
    _both_labels(mrpc_labels, paths["mrpc"], "average precision")
    questions, relevant, paragraphs = _squad_retrieval(paths["squad"], max_examples)
    probes = []
    for name, metric, key in (("SST-2", "acc", "sst2"), ("CoLA", "mcc", "cola")):
        train, train_y = _labelled(name, paths[f"{key}_train"], "train", max_examples)
        dev, dev_y = _labelled(name, paths[f"{key}_dev"], "dev", max_examples)
        if len(train) > probe_train_examples:  # a seeded sample, in file order
            keep = np.sort(np.random.default_rng(seed).permutation(len(train))[:probe_train_examples])
            train, train_y = [train[i] for i in keep], train_y[keep]
        _both_labels(train_y, paths[f"{key}_train"], "a linear probe")
        probes.append(ProbeTask(name, metric, [e.text_a for e in train], train_y, [e.text_a for e in dev], dev_y))
    return ScorecardData(sts=(a, b, gold), mrpc=([e.text_a for e in mrpc], [e.text_b for e in mrpc], mrpc_labels),
                         questions=questions, relevant=relevant, paragraphs=paragraphs, probes=probes, files=paths)


def _squad_retrieval(path: str, max_examples: int | None):
    """(questions, index of each one's paragraph, paragraphs): every paragraph of the file once (identical contexts
    merged), the questions in file order (the first `max_examples`)."""
    data = read_squad_file(path, "--data_dir")["data"]
    paragraphs, where, questions, relevant = [], {}, [], []
    for article in data:
        for par in article["paragraphs"]:
            column = where.setdefault(par["context"], len(paragraphs))
            if column == len(paragraphs):
                paragraphs.append(par["context"])
            for qa in par["qas"]:
                if not max_examples or len(questions) < max_examples:
                    questions.append(qa["question"])
                    relevant.append(column)
    return questions, np.asarray(relevant, dtype=np.int64), paragraphs


# --------------------------------------------------------------------------------------------------------------
# One model
# --------------------------------------------------------------------------------------------------------------
def check_model_dir(model_dir: str, lengths: dict) -> None:
    """The checks that need no weights: the folder exists, its pooling config reads, the lengths fit."""
    if model_dir.endswith(".onnx"):  # an export_onnx.py graph: checked when it loads (no weights to wait for)
        return
    if not os.path.isdir(model_dir):
        raise UserError(f"--model_dir: no such folder: {model_dir}")
    if is_static_folder(model_dir):
        return
    read_pooling(model_dir)
    for option, length in lengths.items():
        check_length_fits(model_dir, length, option, "--model_dir")


def _embed_texts(model, tokenizer, texts: list, mode: str, normalize: bool, batch_size: int, max_length: int,
                 label: str) -> dict:
    """{text: embedding} of the distinct texts."""
    distinct = list(dict.fromkeys(texts))
    emb = encode(model, tokenizer, distinct, mode, normalize, batch_size, max_length, progress=label)
    return dict(zip(distinct, emb))


def score_model(model_dir: str, data: ScorecardData, batch_size: int = 32, max_seq_length: int = 128,
                paragraph_max_seq_length: int = 256, probe_c: float | None = None, seed: int = 42,
                name: str | None = None) -> dict:
    """The scorecard row of one model folder (HF encoder or static token embedding); `name` labels its progress."""
    start = time.perf_counter()
    onnx = model_dir.endswith(".onnx")
    model, tokenizer, mode, normalize = load_onnx_encoder(model_dir) if onnx else load_embedding_folder(model_dir)
    loaded = time.perf_counter()
    (sa, sb, gold), (ma, mb, mrpc_y) = data.sts, data.mrpc
    sentences = sa + sb + ma + mb + data.questions + [t for p in data.probes for t in p.train_texts + p.dev_texts]
    name = name or os.path.basename(os.path.normpath(model_dir))
    vec = _embed_texts(model, tokenizer, sentences, mode, normalize, batch_size, max_seq_length,
                       f"{name}: sentences")
    par = _embed_texts(model, tokenizer, data.paragraphs, mode, normalize, batch_size, paragraph_max_seq_length,
                       f"{name}: paragraphs")
    rows = lambda texts, table: np.stack([table[t] for t in texts])  # noqa: E731
    encoded = time.perf_counter()
    scores = {
        "sts_b_spearman": 100.0 * spearman(cosine_rows(rows(sa, vec), rows(sb, vec)), gold),
        "mrpc_ap": 100.0 * average_precision(cosine_rows(rows(ma, vec), rows(mb, vec)), mrpc_y),
    }
    similarity = unit_rows(rows(data.questions, vec)) @ unit_rows(rows(data.paragraphs, par)).T
    retrieval = retrieval_scores(similarity, data.relevant, RETRIEVAL_K)
    scores["squad_ndcg@10"], scores["squad_mrr@10"] = retrieval["ndcg@10"], retrieval["mrr@10"]
    probes = {}
    for task in data.probes:
        result = linear_probe(rows(task.train_texts, vec), task.train_labels, rows(task.dev_texts, vec),
                              task.dev_labels, task.metric, seed, probe_c)
        scores[{"SST-2": "sst2_acc", "CoLA": "cola_mcc"}[task.name]] = result["score"]
        probes[task.name] = {"C": result["C"], "selection": result["selection"], "train": len(task.train_labels),
                             "dev": len(task.dev_labels)}
    scores["average"] = float(np.mean([scores[k] for k in AVERAGE_OF]))
    done = time.perf_counter()
    for key, value in scores.items():
        if not math.isfinite(value):
            raise UserError(f"--model_dir {model_dir}: {key} is not a finite number ({value}): the embeddings hold "
                            f"NaN or infinity")
    return {
        "path": os.path.abspath(model_dir),
        "kind": "onnx" if onnx else "static" if is_static_folder(model_dir) else "transformer",
        "pooling": mode, "normalize": bool(normalize),
        "parameters": None if onnx else int(sum(p.numel() for p in model.parameters())),  # ONNX: inside the graph
        "hidden_size": int(next(iter(vec.values())).shape[-1]),
        "scores": scores, "probes": probes,
        "texts_encoded": {"sentences": len(vec), "paragraphs": len(par)},
        "seconds": {"load": loaded - start, "encode": encoded - loaded, "score": done - encoded,
                    "total": done - start},
    }


# --------------------------------------------------------------------------------------------------------------
# The scorecard
# --------------------------------------------------------------------------------------------------------------
def row_names(paths: list) -> list:
    """Short unique labels: the folder name, with as many parent folders as it takes to tell rows apart."""
    parts = [os.path.abspath(p).rstrip(os.sep).split(os.sep) for p in paths]
    depth = 1
    while depth < max(len(p) for p in parts):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
        depth += 1
    return ["/".join(p) for p in parts]


def scorecard_markdown(card: dict) -> str:
    keys = list(COLUMNS) + ["average"]
    head = ["model", "kind", "params (M)"] + [COLUMNS[k][0] for k in COLUMNS] + ["average", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in card["models"]:
        params = "-" if row["parameters"] is None else f"{row['parameters'] / 1e6:.1f}"
        cells = [f"`{row['name']}`", row["kind"], params]
        cells += [f"{row['scores'][k]:.2f}" for k in keys] + [f"{row['seconds']['total']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    s = card["settings"]
    probe_c = f"C = {s['probe_c']}" if s["probe_c"] is not None else \
        f"C from {list(PROBE_C_GRID)} on {PROBE_HELDOUT_FRACTION:.0%} of the training rows held out"
    notes = [
        "",
        f"average = mean of {', '.join(COLUMNS[k][0] for k in AVERAGE_OF)} (x100 each).",
        f"Max sequence length {s['max_seq_length']} tokens (sentences, questions), "
        f"{s['paragraph_max_seq_length']} (paragraphs); linear probes: standardised features, logistic regression, "
        f"{probe_c}, at most {s['probe_train_examples']} training sentences, seed {s['seed']}"
        + (f"; every file capped at {s['max_examples']} examples" if s["max_examples"] else "") + ".",
    ]
    return "\n".join(lines + notes) + "\n"


def evaluate_scorecard(args) -> dict:
    """eval_embeddings.py: score every --model_dir, write OUT/scorecard.json and OUT/scorecard.md."""
    names = args.names or row_names(args.model_dir)
    if len(names) != len(args.model_dir) or len(set(names)) != len(names):
        raise UserError(f"--names: {len(args.model_dir)} distinct labels expected (one per --model_dir), got "
                        f"{len(names)}{'' if len(set(names)) == len(names) else ' with repeats'}")
    lengths = {"--max_seq_length": args.max_seq_length, "--paragraph_max_seq_length": args.paragraph_max_seq_length}
    for model_dir in args.model_dir:
        check_model_dir(model_dir, lengths)
    data = load_scorecard_data(args.data_dir, args.max_examples, args.probe_train_examples, args.seed)
    logger.info("data: %d STS-B pairs, %d MRPC pairs, %d SQuAD questions over %d paragraphs, probes %s",
                len(data.sts[2]), len(data.mrpc[2]), len(data.questions), len(data.paragraphs),
                ", ".join(f"{p.name} {len(p.train_labels)}/{len(p.dev_labels)}" for p in data.probes))
    rows = []
    for name, model_dir in zip(names, args.model_dir):
        row = {"name": name, **score_model(model_dir, data, args.batch_size, args.max_seq_length,
                                           args.paragraph_max_seq_length, args.probe_c, args.seed, name)}
        logger.info("%s: average %.2f (%s) in %.0f s", name, row["scores"]["average"],
                    ", ".join(f"{COLUMNS[k][0]} {row['scores'][k]:.2f}" for k in COLUMNS), row["seconds"]["total"])
        rows.append(row)
    card = {
        "columns": {k: v[1] for k, v in COLUMNS.items()},
        "average_of": list(AVERAGE_OF),
        "settings": {"data_dir": os.path.abspath(args.data_dir), "files": data.files,
                     "max_examples": args.max_examples, "probe_train_examples": args.probe_train_examples,
                     "probe_c": args.probe_c, "probe_c_grid": list(PROBE_C_GRID),
                     "probe_heldout_fraction": PROBE_HELDOUT_FRACTION, "seed": args.seed,
                     "max_seq_length": args.max_seq_length,
                     "paragraph_max_seq_length": args.paragraph_max_seq_length, "batch_size": args.batch_size,
                     "torch_threads": torch.get_num_threads()},
        "models": rows,
    }
    markdown = scorecard_markdown(card)
    atomic_write_json(card, os.path.join(args.output_dir, "scorecard.json"))
    atomic_write_text(markdown, os.path.join(args.output_dir, "scorecard.md"))
    print(markdown, end="")
    return card
