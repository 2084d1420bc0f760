"""Teacher predictions computed once per training example and stored in a safe file.

The teacher of a distillation stage is frozen and in eval mode (no dropout), so its logits for an example are the
same every epoch: computing them once is exact, and later epochs (and later runs on the same data) pay only the
student's forward and backward.

The file is `teacher_logits-<key>.safetensors`; the key is a SHA-256 over
  * the training inputs themselves (token ids and token types of every example, in order: this covers the data
    file, augmentation, the tokenizer and the maximum length),
  * the teacher's weights file (its bytes) and config,
  * the maximum sequence length,
so a cache is never reused for different inputs. Its metadata repeats the key parts and is checked on load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Callable

import torch

from .errors import UserError
from .files import atomic_path, sha256_file

logger = logging.getLogger("kd")


def teacher_fingerprint(teacher_dir: str, config) -> str:
    """SHA-256 of the teacher's weights file(s) and config (so a re-fine-tuned teacher gets a new cache)."""
    h = hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    names = sorted(n for n in os.listdir(teacher_dir) if n.endswith((".safetensors", ".bin"))
                   and not n.startswith(".")) if os.path.isdir(teacher_dir) else []
    if os.path.isfile(teacher_dir):
        names, teacher_dir = [os.path.basename(teacher_dir)], os.path.dirname(teacher_dir)
    for name in names:
        h.update(name.encode())
        h.update(sha256_file(os.path.join(teacher_dir, name)).encode())
    return h.hexdigest()


def features_fingerprint(items: list[dict]) -> str:
    """SHA-256 of encoded items' input_ids and token_type_ids, in order; labels are left out."""
    h = hashlib.sha256()
    for item in items:
        types = item.get("token_type_ids")
        h.update(json.dumps([list(item["input_ids"]), list(types) if types is not None else None]).encode())
    return h.hexdigest()


def cached_teacher_logits(cache_dir: str, key_parts: dict[str, str | int], num_examples: int,
                          compute: Callable[[], torch.Tensor], num_outputs: int | None = None) -> torch.Tensor:
    """The (N, C) teacher logits for the key `key_parts`: read from `cache_dir` when present, else `compute()`d and
    written atomically. A file whose metadata, shape (N examples x `num_outputs`) or values (every logit finite)
    do not match is an error, never silently used."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    meta = {k: str(v) for k, v in sorted(key_parts.items())}
    key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:24]
    path = os.path.join(cache_dir, f"teacher_logits-{key}.safetensors")
    if os.path.isfile(path):
        try:
            with safe_open(path, framework="pt") as f:
                stored = f.metadata() or {}
                logits = f.get_tensor("logits")
        except Exception as err:
            raise UserError(f"{path}: unreadable teacher-logit cache ({err}); delete it to recompute")
        if stored != meta:
            raise UserError(f"{path}: cache does not match its key (data/teacher/max length differ); delete it")
        want = (num_examples, num_outputs if num_outputs is not None else logits.size(-1))
        if logits.dim() != 2 or tuple(logits.shape) != want:
            raise UserError(f"{path}: teacher logits of shape {tuple(logits.shape)}, expected {want}; delete it")
        if not torch.isfinite(logits).all():
            raise UserError(f"{path}: {int((~torch.isfinite(logits)).sum())} teacher logits are not finite; delete "
                            "it to recompute")
        logger.info("teacher logits for %d examples read from %s", num_examples, path)
        return logits
    logits = compute().float().contiguous()
    if logits.size(0) != num_examples:
        raise ValueError(f"computed {logits.size(0)} logits for {num_examples} examples")
    with atomic_path(path) as tmp:
        save_file({"logits": logits}, tmp, metadata=meta)
    logger.info("teacher logits for %d examples cached in %s", num_examples, path)
    return logits
