"""A static token embedding distilled from a sentence-embedding teacher without any training text (`distill_static.py`).

The route of model2vec (Tulkens & van Dongen, 2024), built on this toolkit's own pieces (the model2vec package is
not used):

1. Token vectors: every vocabulary token except the special ones ([CLS], [SEP], [PAD], [UNK], [MASK]) and the
   unused ones ([unused0] ...) goes through the teacher on its own, as the three-token input
   `[SEP] token [CLS]` (`--token_context sep_cls`: the order model2vec uses, which it found to work better than
   `[CLS] token [SEP]`, `cls_sep`; `alone`: the bare token). The teacher's own pooling of its last layer
   (all-MiniLM-L6-v2: the mean over the three positions, as model2vec takes) is the token's vector, not normalised.
2. PCA to `--pca_dims` components (default 256, model2vec's), fitted on those vectors (centred, not whitened);
   `--pca_dims 0` keeps the teacher's width without PCA.
3. Zipf weighting: the token's rank r = 1..n in vocabulary order stands in for its frequency (WordPiece
   vocabularies list tokens roughly by decreasing frequency). `--weighting sif` (default; model2vec >= 0.4):
       p_r = (1 / (r + 1)) / sum_{j=1}^{n} 1 / (j + 1),     w_r = a / (a + p_r),   a = --sif_coefficient (1e-4);
   `log` (model2vec's first releases): w_r = log(1 + r) (they counted r from 0, which zeroed the first row,
   [PAD]; here r counts the kept tokens from 1); `none`: w_r = 1. Row r is multiplied by w_r.
4. The table (special and unused tokens: zero rows, never pooled) with the teacher's tokenizer is written as a
   static token embedding folder (`kdcore.static_token_embedding`): a sentence is the mean of its tokens' vectors,
   L2-normalised, as model2vec's models do.
"""
from __future__ import annotations

import logging
import os
import re
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from kdcore.cli import UserError
from kdcore.model_card import describe_run
from kdcore.modeling import read_model_config
from kdcore.sentence_embeddings import load_embedding_folder, pool
from kdcore.static_token_embedding import is_static_folder, save_static_folder

logger = logging.getLogger("kd.static")

UNUSED_TOKEN = re.compile(r"^\[unused\d+\]$")
TOKEN_CONTEXTS = ("sep_cls", "cls_sep", "alone")
WEIGHTINGS = ("sif", "log", "none")


def skipped_token_ids(tokenizer) -> set[int]:
    """Ids that get no vector: the tokenizer's special tokens and BERT's placeholder [unusedN] tokens."""
    ids = set(tokenizer.all_special_ids)
    ids |= {i for i, tok in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))))
            if tok is not None and UNUSED_TOKEN.match(tok)}
    return ids


def context_ids(tokenizer, context: str) -> tuple[list[int], list[int]]:
    """(ids before, ids after) the token: what the tokenizer puts around a text ([CLS] ... [SEP] for BERT),
    in that order (`cls_sep`), swapped (`sep_cls`), or nothing (`alone`)."""
    if context == "alone":
        return [], []
    ids = tokenizer("a")["input_ids"]
    inner = tokenizer("a", add_special_tokens=False)["input_ids"]
    if len(ids) != len(inner) + 2 or ids[1:-1] != inner:
        raise UserError(f"the tokenizer does not wrap a text in one start and one end token ({ids} for 'a'); "
                        f"use --token_context alone")
    first, last = ids[:1], ids[-1:]
    return (last, first) if context == "sep_cls" else (first, last)


def token_vectors(model, token_ids: list[int], before: list[int], after: list[int], mode: str = "mean",
                  batch_size: int = 1024) -> np.ndarray:
    """(N, H) the teacher's pooled output for each token id on its own, as `before + [id] + after`."""
    device = next(model.parameters()).device
    out = []
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(token_ids), batch_size), desc="token vectors", dynamic_ncols=True):
            ids = torch.tensor([before + [t] + after for t in token_ids[start:start + batch_size]], device=device)
            mask = torch.ones_like(ids)
            hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).last_hidden_state
            out.append(pool(hidden, mask, mode).cpu().numpy())
    return np.concatenate(out).astype(np.float64)


def pca_reduce(vectors: np.ndarray, dims: int) -> tuple[np.ndarray, float]:
    """(the vectors projected on their first `dims` principal components, the variance ratio they explain)."""
    from sklearn.decomposition import PCA  # scikit-learn: imported where used

    pca = PCA(n_components=dims, svd_solver="full")
    reduced = pca.fit_transform(vectors)
    return reduced, float(pca.explained_variance_ratio_.sum())


def zipf_weights(n: int, weighting: str = "sif", sif_coefficient: float = 1e-4) -> np.ndarray:
    """(n,) weights of the tokens of ranks 1..n (formulas in the module docstring)."""
    r = np.arange(1, n + 1, dtype=np.float64)
    if weighting == "sif":
        p = (1.0 / (r + 1)) / (1.0 / (r + 1)).sum()
        return sif_coefficient / (sif_coefficient + p)
    if weighting == "log":
        return np.log1p(r)
    if weighting == "none":
        return np.ones(n)
    raise ValueError(f"unknown weighting {weighting!r} (known: {', '.join(WEIGHTINGS)})")


def distill_static(args) -> dict:
    """distill_static.py: the teacher folder `args.teacher_model` -> a static token embedding folder."""
    if is_static_folder(args.teacher_model):
        raise UserError(f"--teacher_model {args.teacher_model}: a static embedding already; give a Transformer")
    describe_run("static-embedding", tags=["knowledge-distillation", "static-embeddings"], datasets=[])
    if not os.path.isdir(args.teacher_model):
        raise UserError(f"--teacher_model: no such folder: {args.teacher_model}")
    hidden = read_model_config(args.teacher_model, "--teacher_model").hidden_size  # checked before weights load
    if args.pca_dims > hidden:
        raise UserError(f"--pca_dims {args.pca_dims} exceeds the teacher's hidden size {hidden} (0 keeps it)")
    start = time.perf_counter()
    model, tokenizer, mode, _ = load_embedding_folder(args.teacher_model, "--teacher_model")
    skipped = skipped_token_ids(tokenizer)
    kept = [i for i in range(len(tokenizer)) if i not in skipped]
    if args.pca_dims > len(kept):
        raise UserError(f"--pca_dims {args.pca_dims} exceeds the {len(kept)} tokens that get a vector")
    before, after = context_ids(tokenizer, args.token_context)
    logger.info("%d token vectors (%d special/unused tokens skipped), input %s", len(kept), len(skipped),
                tokenizer.convert_ids_to_tokens(before) + ["<token>"] + tokenizer.convert_ids_to_tokens(after))
    vectors = token_vectors(model, kept, before, after, mode, args.batch_size)
    encoded = time.perf_counter()
    explained = None
    if args.pca_dims:
        vectors, explained = pca_reduce(vectors, args.pca_dims)
        logger.info("PCA %d -> %d dims, %.1f %% of the variance", hidden, args.pca_dims, 100 * explained)
    vectors = vectors * zipf_weights(len(kept), args.weighting, args.sif_coefficient)[:, None]
    if not np.isfinite(vectors).all():
        raise UserError(f"--teacher_model {args.teacher_model}: the teacher's outputs are not finite numbers")
    table = np.zeros((len(tokenizer), vectors.shape[1]), dtype=np.float32)
    table[kept] = vectors
    pooled = np.zeros(len(tokenizer), dtype=np.uint8)
    pooled[kept] = 1
    info = {"made_by": "distill_static.py", "teacher": args.teacher_model, "teacher_pooling": mode,
            "token_context": args.token_context, "pca_dims": args.pca_dims or None,
            "pca_explained_variance_ratio": explained, "weighting": args.weighting,
            "sif_coefficient": args.sif_coefficient if args.weighting == "sif" else None,
            "pooled_tokens": len(kept), "skipped_tokens": len(skipped)}
    save_static_folder(args.output_dir, table, pooled, tokenizer, info, normalize=True)
    done = time.perf_counter()
    result = {**info, "output_dir": args.output_dir, "hidden_size": int(vectors.shape[1]),
              "seconds": {"token_vectors": encoded - start, "total": done - start}}
    logger.info("static embedding (%d x %d) written to %s in %.0f s", len(tokenizer), vectors.shape[1],
                args.output_dir, done - start)
    return result
