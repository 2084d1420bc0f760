"""Seq2seq data for UniLM fine-tuning and decoding (s2s-ft's JSON-lines layout).

Input: one JSON object a line with `src` and `tgt`, each a string (tokenised here) or a list of tokens
(pre-tokenised with the model's tokenizer, as s2s-ft's `*.uncased_tokenized` files); `tgt` may be absent when
decoding.

Features are token ids without special tokens; `[CLS] src [SEP]` / `tgt [SEP]` and truncation are applied when
an item is drawn, so one cache serves any length limits. The cache is a safetensors file (flat int32 ids plus
offsets, and a metadata fingerprint of the tokenizer and the input file), never a pickle.
"""
from __future__ import annotations

import json
import logging
import os

import torch
from torch.utils.data import Dataset

from kdcore.batching import pad_batch
from kdcore.cli import UserError
from kdcore.files import atomic_path, file_fingerprint, iter_text_lines

logger = logging.getLogger("kd.seq2seq")

CACHE_FORMAT = "kd-seq2seq-features-v1"


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------
def iter_json_lines(path: str, argname: str):
    """(line number, object) for every non-blank line of a JSON-lines file; UserError naming file:line."""
    for lineno, line in iter_text_lines(path, argname):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{lineno}: not valid JSON ({err.msg})")


def read_jsonl(path: str, require_target: bool, argname: str = "--train_file") -> list[dict]:
    """Examples of a JSON-lines file; UserError naming file:line for anything malformed, or an empty file."""
    examples = []
    for lineno, obj in iter_json_lines(path, argname):
        if not isinstance(obj, dict) or "src" not in obj:
            raise UserError(f"{path}:{lineno}: no \"src\" field (expected {{\"src\": ..., \"tgt\": ...}})")
        for key in ("src", "tgt"):
            if key in obj and not _is_text(obj[key]):
                raise UserError(f"{path}:{lineno}: \"{key}\" must be a string or a list of token strings")
        if require_target and "tgt" not in obj:
            raise UserError(f"{path}:{lineno}: no \"tgt\" field (needed for training)")
        obj["_line"] = lineno
        examples.append(obj)
    if not examples:
        raise UserError(f"{argname} {path}: the file has no examples")
    return examples


def _is_text(value) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(t, str) for t in value))


def to_ids(texts: list, tokenizer) -> list[list[int]]:
    """Token ids (no special tokens) for strings (tokenised in one batch) or token lists (looked up)."""
    out: list[list[int] | None] = [None] * len(texts)
    strings = [(i, t) for i, t in enumerate(texts) if isinstance(t, str)]
    if strings:
        enc = tokenizer([t for _, t in strings], add_special_tokens=False, verbose=False)["input_ids"]
        for (i, _), ids in zip(strings, enc):
            out[i] = list(ids)
    for i, t in enumerate(texts):
        if out[i] is None:
            out[i] = tokenizer.convert_tokens_to_ids(t) if t else []
    return out


# --------------------------------------------------------------------------------------------------------------
# Feature cache (safetensors)
# --------------------------------------------------------------------------------------------------------------
def check_special_tokens(tokenizer, argname: str = "--tokenizer_name") -> None:
    """UniLM needs [CLS]/<s>, [SEP]/</s>, [MASK]/<mask> and a pad token."""
    missing = [name for name in ("cls", "sep", "mask", "pad") if getattr(tokenizer, f"{name}_token_id") is None]
    if missing:
        raise UserError(f"{argname}: the tokenizer has no {', '.join(missing)} token (UniLM seq2seq needs "
                        "cls, sep, mask and pad)")


def tokenizer_fingerprint(tokenizer) -> dict:
    return {
        "tokenizer_class": type(tokenizer).__name__,
        "vocab_size": str(len(tokenizer)),
        "do_lower_case": str(getattr(tokenizer, "do_lower_case", None)),
        "probe": json.dumps(tokenizer("Hello World, naïve tokenisation!", add_special_tokens=False)["input_ids"]),
    }


def _pack(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    offsets = torch.zeros(len(seqs) + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    flat = torch.tensor([t for s in seqs for t in s], dtype=torch.int32)
    return flat, offsets


def _unpack(flat: torch.Tensor, offsets: torch.Tensor) -> list[list[int]]:
    flat, offsets = flat.tolist(), offsets.tolist()
    return [flat[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def save_feature_cache(path: str, features: dict, meta: dict) -> None:
    """Write `features` ({"source_ids": [[...]], "target_ids": [[...]]}) to a safetensors file, atomically."""
    from safetensors.torch import save_file

    tensors = {}
    for key in ("source_ids", "target_ids"):
        tensors[key], tensors[key + ".offsets"] = _pack(features[key])
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": CACHE_FORMAT, **meta})


class StaleCache(UserError):
    """A feature cache of this toolkit, built from other inputs (another training file or tokenizer)."""


# What a cache is keyed by: the tokenizer's fingerprint and the training file's bytes.
CACHE_KEYS = ("tokenizer_class", "vocab_size", "do_lower_case", "probe", "train_file_sha256", "train_file_size")


def load_feature_cache(path: str, meta: dict, argname: str = "--cached_train_features_file") -> dict:
    """Read a cache written by `save_feature_cache`. UserError if it is not one; `StaleCache` if it was built
    from other inputs than `meta` describes (a key of `CACHE_KEYS` differs)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            stored = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:
        raise UserError(
            f"{argname} {path}: not a safetensors feature cache (old pickled .pt caches are never loaded); "
            "delete it or give another path to rebuild it"
        )
    if stored.get("format") != CACHE_FORMAT:
        raise UserError(f"{argname} {path}: not a feature cache of this toolkit (format {stored.get('format')!r})")
    for key in CACHE_KEYS:
        if key in meta and stored.get(key) != meta[key]:
            what = "training file" if key.startswith("train_file") else "tokenizer"
            raise StaleCache(f"{argname} {path}: built from a different {what} ({key} {stored.get(key)} != "
                             f"{meta[key]})")
    return {key: _unpack(tensors[key], tensors[key + ".offsets"]) for key in ("source_ids", "target_ids")}


def load_train_features(train_file: str, tokenizer, cache_file: str | None, is_main: bool = True) -> dict:
    """Token ids of every training example, from the cache if it exists, else tokenised (and cached)."""
    if not train_file or not os.path.isfile(train_file):
        raise UserError(f"--train_file: no such file: {train_file}")
    source = file_fingerprint(train_file)
    meta = {**tokenizer_fingerprint(tokenizer), "train_file_sha256": source["sha256"],
            "train_file_size": source["size"]}
    if cache_file and os.path.isfile(cache_file):
        try:
            features = load_feature_cache(cache_file, meta)
            logger.info("Loaded cached features from %s", cache_file)
            return features
        except StaleCache as err:
            logger.warning("%s; rebuilding it", err)
    examples = read_jsonl(train_file, require_target=True, argname="--train_file")
    features = {
        "source_ids": to_ids([e["src"] for e in examples], tokenizer),
        "target_ids": to_ids([e["tgt"] for e in examples], tokenizer),
    }
    empty = [e["_line"] for e, s in zip(examples, features["source_ids"]) if not s]
    if empty:
        logger.warning("%s: %d examples have an empty source (first at line %d)", train_file, len(empty), empty[0])
    if cache_file and is_main:
        save_feature_cache(cache_file, features, {**meta, "train_file": source["path"]})
        logger.info("Saved features of %d examples to %s", len(examples), cache_file)
    return features


# --------------------------------------------------------------------------------------------------------------
# Training items
# --------------------------------------------------------------------------------------------------------------
def truncation_report(features: dict, max_source_len: int, max_target_len: int) -> dict:
    """How many sources / targets the length limits cut (the limits include [CLS]/[SEP])."""
    src = sum(1 for s in features["source_ids"] if len(s) > max_source_len - 2)
    tgt = sum(1 for t in features["target_ids"] if len(t) > max_target_len - 1)
    return {"examples": len(features["source_ids"]), "truncated_sources": src, "truncated_targets": tgt}


class Seq2SeqTrainDataset(Dataset):
    """Items for the pseudo-mask objective (s2s-ft `mask_way v2`), drawn with target-side noise.

    For a target token y the pseudo twin is: y with probability `keep_prob`, a random token with probability
    `random_prob`, else [MASK]. With probability `target_mask_prob` the *real* target token is replaced by that
    same noised token as well (target-side noise); with probability `source_mask_prob` a source token (not
    [CLS]/[SEP]) is noised the same way. Labels are always the clean target. Noise uses torch's global RNG, whose
    state the training runtime checkpoints, so a resumed run draws the same noise.
    """

    def __init__(self, features: dict, max_source_len: int, max_target_len: int, tokenizer,
                 keep_prob: float = 0.1, random_prob: float = 0.1, target_mask_prob: float = 0.5,
                 source_mask_prob: float = -1.0):
        self.sources = features["source_ids"]
        self.targets = features["target_ids"]
        self.max_source_len = max_source_len
        self.max_target_len = max_target_len
        check_special_tokens(tokenizer)
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.mask_id, self.pad_id = tokenizer.mask_token_id, tokenizer.pad_token_id
        self.vocab_size = len(tokenizer)
        self.keep_prob, self.random_prob = keep_prob, random_prob
        self.target_mask_prob, self.source_mask_prob = target_mask_prob, source_mask_prob

    def __len__(self) -> int:
        return len(self.sources)

    def _noised(self, ids: torch.Tensor) -> torch.Tensor:
        r = torch.rand(ids.shape)
        random_tokens = torch.randint(0, self.vocab_size, ids.shape)
        out = torch.full_like(ids, self.mask_id)
        out = torch.where(r < self.keep_prob + self.random_prob, random_tokens, out)
        return torch.where(r < self.keep_prob, ids, out)

    def __getitem__(self, idx: int) -> dict:
        source = [self.cls_id] + list(self.sources[idx][: self.max_source_len - 2]) + [self.sep_id]
        target = list(self.targets[idx][: self.max_target_len - 1]) + [self.sep_id]
        source = torch.tensor(source, dtype=torch.long)
        labels = torch.tensor(target, dtype=torch.long)
        pseudo = self._noised(labels)
        target_in = torch.where(torch.rand(labels.shape) < self.target_mask_prob, pseudo, labels)
        if self.source_mask_prob > 0:
            inner = torch.zeros_like(source, dtype=torch.bool)
            inner[1:-1] = True
            hit = inner & (torch.rand(source.shape) < self.source_mask_prob)
            source = torch.where(hit, self._noised(source), source)
        return {"source_ids": source, "target_ids": target_in, "pseudo_ids": pseudo, "label_ids": labels}


def pad_stack(seqs: list, pad_id: int) -> torch.Tensor:
    """(N, longest) ids, right-padded with `pad_id` (kdcore.batching.pad_batch's input_ids)."""
    return pad_batch(seqs, None, pad_id)["input_ids"]


class TrainCollator:
    """List of items -> the keyword arguments of `UniLMSeq2Seq.forward` (padded to the longest in the batch)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict]) -> dict:
        return {
            "source_ids": pad_stack([it["source_ids"] for it in items], self.pad_id),
            "target_ids": pad_stack([it["target_ids"] for it in items], self.pad_id),
            "pseudo_ids": pad_stack([it["pseudo_ids"] for it in items], self.pad_id),
            "label_ids": pad_stack([it["label_ids"] for it in items], self.pad_id),
            "num_source_tokens": torch.tensor([len(it["source_ids"]) for it in items], dtype=torch.long),
            "num_target_tokens": torch.tensor([len(it["target_ids"]) for it in items], dtype=torch.long),
        }


# --------------------------------------------------------------------------------------------------------------
# Decoding inputs
# --------------------------------------------------------------------------------------------------------------
def decode_sources(source_ids: list[list[int]], tokenizer, max_source_tokens: int) -> tuple[list[list[int]], int]:
    """`[CLS] src [SEP]` with src cut to `max_source_tokens`; returns the sequences and how many were cut."""
    cut = sum(1 for s in source_ids if len(s) > max_source_tokens)
    return [[tokenizer.cls_token_id] + list(s[:max_source_tokens]) + [tokenizer.sep_token_id] for s in source_ids], cut


def detokenize(ids: list[int], tokenizer) -> str:
    """One output line: WordPiece pieces merged into words, space separated (s2s-ft's output format); for
    SentencePiece/BPE tokenizers the tokenizer's own decoding. Newlines become " [X_SEP] " as in s2s-ft."""
    tokens = tokenizer.convert_ids_to_tokens(ids)
    if any(t.startswith("##") for t in tokens) or type(tokenizer).__name__.startswith(("Bert", "DistilBert", "Electra")):
        words: list[str] = []
        for t in tokens:
            if t.startswith("##") and words:
                words[-1] += t[2:]
            else:
                words.append(t)
        text = " ".join(words)
    else:
        text = tokenizer.convert_tokens_to_string(tokens).strip()
    return " [X_SEP] ".join(text.split("\n"))
