"""Sentence-embedding models: sentence-transformers folders, pooling, the embedding-distillation loss, STS zero-shot.

A sentence-transformers folder is a HF encoder folder plus `modules.json` (Transformer -> Pooling [-> Normalize])
and the pooling module's `config.json`. When a teacher is such a folder, a student distilled from it is written as
one too (`write_sentence_transformers_files`), so `SentenceTransformer(student_dir)` embeds with the teacher's pooling
and normalisation.

* `pool(hidden, mask, mode)` – mean / cls / max / mean_sqrt_len pooling over real tokens.
* `embedding_mse(student_emb, teacher_emb)` – the embedding-distillation loss (formula in its docstring).
* `load_embedding_folder` – any sentence-embedding folder (HF encoder with its pooling, or a static token
  embedding, `kdcore.static_token_embedding`) as (model, tokenizer, pooling, normalize) for `encode`.
* `sts_zero_shot_spearman` – Spearman correlation between cos(embedding_a, embedding_b) and the gold similarity of
  an STS file (GLUE STS-B layout), with no training on STS (`sts_spearman`: the same score of given embeddings).

Plain transformers/numpy code: sentence-transformers is only needed to *load* the folders elsewhere.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .errors import UserError
from .files import atomic_path, atomic_write_json, iter_text_lines, read_json_file
from .modeling import load_model, load_tokenizer
from .static_token_embedding import is_static_folder, load_static_folder

logger = logging.getLogger("kd")

POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len")
ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


# --------------------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------------------
def is_sentence_transformers_folder(path: str | None) -> bool:
    return bool(path) and os.path.isdir(path) and os.path.isfile(os.path.join(path, "modules.json"))


def _modules(path: str) -> list[dict]:
    file = os.path.join(path, "modules.json")
    modules = read_json_file(file, "sentence-transformers folder", "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) and "type" in m for m in modules):
        raise UserError(f"{file}: expected a list of modules with a 'type' each")
    return modules


def read_pooling(path: str) -> tuple[str, bool]:
    """(pooling mode, normalize) of a sentence-transformers folder; ("mean", False) for a plain HF folder."""
    if not is_sentence_transformers_folder(path):
        return "mean", False
    mode, normalize = "mean", False
    for module in _modules(path):
        kind = module["type"].rsplit(".", 1)[-1]
        if kind == "Normalize":
            normalize = True
        elif kind == "Pooling":
            cfg_file = os.path.join(path, module.get("path", ""), "config.json")
            cfg = read_json_file(cfg_file, "sentence-transformers folder", "pooling config")
            if not isinstance(cfg, dict):
                raise UserError(f"{cfg_file}: a pooling config must be a JSON object")
            chosen = [m for m in POOLING_MODES if cfg.get(f"pooling_mode_{m}_token" if m == "cls" else
                                                          f"pooling_mode_{m}_tokens")]
            if len(chosen) != 1:
                raise UserError(f"{cfg_file}: exactly one pooling mode must be on (found {chosen or 'none'})")
            mode = chosen[0]
    return mode, normalize


def write_sentence_transformers_files(teacher_dir: str, output_dir: str, hidden_size: int) -> bool:
    """Give `output_dir` (a saved HF encoder folder) the teacher's sentence-transformers modules.

    Copies modules.json, sentence_bert_config.json, config_sentence_transformers.json and every module folder
    (pooling, normalize, ...) with the pooling's `word_embedding_dimension` set to the student's `hidden_size`.
    A module with weights of its own (e.g. a Dense projection) cannot follow a narrower student and is refused.
    Returns False (and writes nothing) when the teacher is not a sentence-transformers folder.
    """
    if not is_sentence_transformers_folder(teacher_dir):
        return False
    for module in _modules(teacher_dir):
        kind = module["type"].rsplit(".", 1)[-1]
        if kind not in ("Transformer", "Pooling", "Normalize"):
            raise UserError(f"{teacher_dir}/modules.json: module {kind} is not supported for a student "
                            f"(only Transformer, Pooling, Normalize)")
    for name in ST_FILES:
        src = os.path.join(teacher_dir, name)
        if os.path.isfile(src):
            with atomic_path(os.path.join(output_dir, name)) as tmp:
                shutil.copyfile(src, tmp)
    for module in _modules(teacher_dir):
        sub = module.get("path", "")
        if not sub:
            continue
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
        cfg_src = os.path.join(teacher_dir, sub, "config.json")
        if module["type"].endswith("Pooling") and os.path.isfile(cfg_src):
            with open(cfg_src, encoding="utf-8") as f:
                cfg = json.load(f)
            cfg["word_embedding_dimension"] = hidden_size
            atomic_write_json(cfg, os.path.join(output_dir, sub, "config.json"))
        elif os.path.isfile(cfg_src):
            shutil.copyfile(cfg_src, os.path.join(output_dir, sub, "config.json"))
    return True


# --------------------------------------------------------------------------------------------------------------
# Pooling and the loss
# --------------------------------------------------------------------------------------------------------------
def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """Sentence embedding from token states (B, T, D) over real tokens (mask (B, T), 1 = real), fp32.

    mean: sum_t m_t h_t / sum_t m_t;  mean_sqrt_len: sum_t m_t h_t / sqrt(sum_t m_t);  cls: h_0;
    max: max over real t of h_t.
    """
    h = hidden.float()
    m = attention_mask.to(h.dtype).unsqueeze(-1)
    if mode == "cls":
        return h[:, 0]
    if mode == "max":
        return h.masked_fill(m == 0, float("-inf")).max(dim=1).values
    total = (h * m).sum(dim=1)
    count = m.sum(dim=1).clamp_min(1.0)
    if mode == "mean":
        return total / count
    if mode == "mean_sqrt_len":
        return total / count.sqrt()
    raise ValueError(f"unknown pooling mode {mode!r} (known: {', '.join(POOLING_MODES)})")


def embedding_mse(student_embeddings: torch.Tensor, teacher_embeddings: torch.Tensor) -> torch.Tensor:
    """Embedding-distillation loss (Reimers & Gurevych, 2020):

        L = (1 / (B * D)) * sum_b || e^S_b - e^T_b ||^2

    over the pooled (and, for a normalising model, L2-normalised) sentence embeddings; shapes (B, D), same D.
    """
    if student_embeddings.shape != teacher_embeddings.shape:
        raise ValueError(f"student {tuple(student_embeddings.shape)} vs teacher {tuple(teacher_embeddings.shape)}: "
                         f"embedding distillation needs the teacher's width")
    return F.mse_loss(student_embeddings.float(), teacher_embeddings.float())


def encode(model: nn.Module, tokenizer, sentences: list[str], mode: str = "mean", normalize: bool = False,
           batch_size: int = 64, max_length: int = 128, device=None, progress: str | None = None) -> np.ndarray:
    """Sentence embeddings (N, D) of a bare HF encoder with the given pooling, in eval mode.

    A model with a `pooling_mask(input_ids, attention_mask)` method (a static token embedding,
    `kdcore.static_token_embedding`) narrows the tokens pooled over. `progress`: the label of a progress bar."""
    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))  # an ONNX encoder has none
    was_training = model.training
    model.eval()
    out = []
    narrow = getattr(model, "pooling_mask", None)
    # Longest first: batches of similar length waste little compute on padding.
    order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=progress, disable=progress is None,
                          dynamic_ncols=True, leave=False):
            idx = order[start:start + batch_size]
            enc = tokenizer([sentences[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"] if narrow is None else narrow(enc["input_ids"], enc["attention_mask"])
            emb = pool(hidden, mask, mode)
            if normalize:
                emb = F.normalize(emb, dim=-1)
            out.append(emb.cpu())
    model.train(was_training)
    emb = torch.cat(out).numpy() if out else np.zeros((0, 1), dtype=np.float32)
    result = np.empty_like(emb)
    result[order] = emb
    return result


# --------------------------------------------------------------------------------------------------------------
# STS zero-shot evaluation
# --------------------------------------------------------------------------------------------------------------
def read_sts(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """sentence1, sentence2, score columns of a GLUE STS-B file (header row; score is the last column).

    Strict UTF-8 (`iter_text_lines`); every score must be a finite number, and the scores must not all be equal
    (a Spearman correlation against a constant is undefined)."""
    rows = [(line_no, line.split("\t")) for line_no, line in iter_text_lines(path, "--sts_file") if line != ""]
    if not rows or "sentence1" not in rows[0][1] or "sentence2" not in rows[0][1]:
        raise UserError(f"{path}: line 1 is not an STS-B header with sentence1 / sentence2 columns")
    header = rows[0][1]
    i1, i2 = header.index("sentence1"), header.index("sentence2")
    a, b, gold = [], [], []
    for line_no, row in rows[1:]:
        try:
            score = float(row[-1])
            a.append(row[i1])
            b.append(row[i2])
        except (IndexError, ValueError):
            raise UserError(f"{path}:{line_no}: expected {len(header)} tab-separated columns with a numeric score")
        if not math.isfinite(score):
            raise UserError(f"{path}:{line_no}: score {row[-1]!r} is not a finite number")
        gold.append(score)
    if not gold:
        raise UserError(f"{path}: no sentence pairs")
    if len(set(gold)) < 2:
        raise UserError(f"{path}: every score is {gold[0]:g}; a Spearman correlation needs scores that differ")
    return a, b, np.asarray(gold, dtype=np.float64)


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties) = Pearson correlation of the ranks; 0 when either side
    is constant (there is no order to correlate). The one Spearman of the toolkit (STS zero-shot, GLUE STS-B)."""
    from scipy.stats import rankdata  # scipy: imported where used, so importing this module stays light

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / np.sqrt((rx ** 2).sum() * (ry ** 2).sum()))


def sts_zero_shot_spearman(model: nn.Module, tokenizer, sts_pairs: tuple, mode: str = "mean",
                           normalize: bool = False, batch_size: int = 64, max_examples: int | None = None) -> dict:
    """{"spearman": 100 * rho(cos(e_a, e_b), gold), "pairs": N} on `sts_pairs` = read_sts(file); no STS training."""
    a, b, gold = sts_pairs
    if max_examples:
        a, b, gold = a[:max_examples], b[:max_examples], gold[:max_examples]
    ea = encode(model, tokenizer, a, mode, normalize, batch_size)
    eb = encode(model, tokenizer, b, mode, normalize, batch_size)
    return {"spearman": sts_spearman(ea, eb, gold), "pairs": len(gold)}


def sts_spearman(embeddings_a: np.ndarray, embeddings_b: np.ndarray, gold) -> float:
    """100 * Spearman's rho between cos(e_a, e_b) row by row and the gold similarity scores."""
    ea, eb = np.asarray(embeddings_a), np.asarray(embeddings_b)
    cos = (ea * eb).sum(-1) / (np.linalg.norm(ea, axis=-1) * np.linalg.norm(eb, axis=-1)).clip(1e-12)
    return 100.0 * spearman(cos, gold)


def load_embedding_folder(model_dir: str, argname: str = "--model_dir"):
    """(model, tokenizer, pooling mode, normalize) of a sentence-embedding folder: a HF encoder folder (pooling and
    normalisation from its sentence-transformers modules; mean, unnormalised for a plain one) or a static token
    embedding folder (`kdcore.static_token_embedding`: mean pooling, normalised as its config says)."""
    if not os.path.isdir(model_dir):
        raise UserError(f"{argname}: no such folder: {model_dir}")
    if is_static_folder(model_dir):
        model, tokenizer, _ = load_static_folder(model_dir, argname)
        return model, tokenizer, "mean", model.normalize
    mode, normalize = read_pooling(model_dir)  # the small files first: a bad one fails before the weights load
    tokenizer = load_tokenizer(model_dir, argname)
    model = load_model(model_dir, argname=argname).eval()
    return model, tokenizer, mode, normalize


def folder_sts_spearman(model_dir: str, sts_pairs: tuple, batch_size: int = 64,
                        max_examples: int | None = None) -> dict:
    """`sts_zero_shot_spearman` of a model folder, with the pooling its sentence-transformers modules name."""
    model, tokenizer, mode, normalize = load_embedding_folder(model_dir)
    result = sts_zero_shot_spearman(model, tokenizer, sts_pairs, mode, normalize, batch_size, max_examples)
    return {**result, "pooling": mode, "normalize": normalize}


def evaluate_sts_folder(args) -> dict:
    """eval_sts.py: the zero-shot STS Spearman of the model folder `args.model_dir`, printed (and written) as JSON."""
    if not os.path.isdir(args.model_dir):
        raise UserError(f"--model_dir: no such folder: {args.model_dir}")
    sts_pairs = read_sts(args.sts_file)  # a bad STS file fails before the model is loaded
    result = folder_sts_spearman(args.model_dir, sts_pairs, args.batch_size, args.max_examples)
    result["sts_file"] = args.sts_file
    print(json.dumps(result))
    if args.output_file:
        atomic_write_json(result, args.output_file)
    return result
