"""A static token embedding: one vector per vocabulary token; a text's embedding is the mean of its tokens' vectors.

No attention, no positions: the fastest sentence encoder there is, and the floor that a small Transformer student
has to clear. The folder is read without transformers' model classes and without pickle:

    config.json                      {"model_type": "static_embedding", "vocab_size": V, "hidden_size": D,
                                      "pooling": "mean", "normalize": true, ...how it was made}
    static_embeddings.safetensors    "embeddings" (V, D) float32: row i is the vector of token id i;
                                     "pooled" (V,) uint8: 1 = the token's vector enters the mean, 0 = skipped
                                     (special and unused tokens: [CLS], [SEP], [PAD], [UNK], [unused17], ...)
    tokenizer.json (+ tokenizer_config.json, special_tokens_map.json)
                                     the tokenizer whose ids index the table

`StaticTokenEmbedding` is a torch module with the encoder interface the toolkit's sentence encoding uses
(`kdcore.sentence_embeddings.encode`): `forward(input_ids, attention_mask)` gives per-token vectors as
`last_hidden_state`, and `pooling_mask` narrows the tokens averaged to the pooled ones. The sentence embedding is

    e = (sum_t m_t x_t) / (sum_t m_t),   m_t = attention_mask_t * pooled[id_t],   x_t = embeddings[id_t]

(L2-normalised when the config says `normalize`); a text with no pooled token gets the zero vector.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from .errors import UserError
from .files import read_json_file
from .model_card import write_model_card
from .modeling import hf_from_pretrained

MODEL_TYPE = "static_embedding"
WEIGHTS_FILE = "static_embeddings.safetensors"


class StaticTokenEmbedding(nn.Module):
    """A (V, D) table of token vectors and the (V,) flags of the tokens that take part in the mean."""

    def __init__(self, embeddings: torch.Tensor, pooled: torch.Tensor, normalize: bool = True):
        super().__init__()
        if embeddings.dim() != 2 or pooled.shape != embeddings.shape[:1]:
            raise ValueError(f"embeddings (V, D) and pooled (V,) expected, got {tuple(embeddings.shape)} and "
                             f"{tuple(pooled.shape)}")
        self.embeddings = nn.Embedding.from_pretrained(embeddings.float(), freeze=True)
        self.register_buffer("pooled", pooled.bool(), persistent=False)
        self.normalize = bool(normalize)
        self.config = SimpleNamespace(model_type=MODEL_TYPE, vocab_size=embeddings.shape[0],
                                      hidden_size=embeddings.shape[1], num_hidden_layers=0, num_attention_heads=0)

    def pooling_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The tokens the sentence embedding averages: real (attention mask 1) and pooled (not special/unused)."""
        return attention_mask * self.pooled[input_ids].to(attention_mask.dtype)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **unused):
        """Per-token vectors (B, T, D) as `last_hidden_state` (token type ids and the like are ignored)."""
        return SimpleNamespace(last_hidden_state=self.embeddings(input_ids))


# --------------------------------------------------------------------------------------------------------------
# Folders
# --------------------------------------------------------------------------------------------------------------
def _raw_config(path: str):
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_static_folder(path: str | None) -> bool:
    """Whether `path` is a folder whose config.json says `"model_type": "static_embedding"`."""
    if not path or not os.path.isdir(path):
        return False
    raw = _raw_config(path)
    return isinstance(raw, dict) and raw.get("model_type") == MODEL_TYPE


def save_static_folder(output_dir: str, embeddings: np.ndarray, pooled: np.ndarray, tokenizer, info: dict,
                       normalize: bool = True) -> None:
    """Write a static token embedding folder (layout in the module docstring) and its model card.

    The files are written to a temporary folder inside `output_dir`, then each is renamed into place (a reader
    never sees half a file; other files in `output_dir` are left alone). `info` (how the table was made) is stored
    in config.json beside the fields the loader reads."""
    from safetensors.numpy import save_file

    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    pooled = np.ascontiguousarray(pooled, dtype=np.uint8)
    if embeddings.ndim != 2 or pooled.shape != embeddings.shape[:1] or len(tokenizer) != embeddings.shape[0]:
        raise ValueError(f"a table (V, D) with pooled flags (V,) for a tokenizer of V tokens expected, got "
                         f"{embeddings.shape}, {pooled.shape}, {len(tokenizer)} tokens")
    config = {"model_type": MODEL_TYPE, "vocab_size": int(embeddings.shape[0]),
              "hidden_size": int(embeddings.shape[1]), "pooling": "mean", "normalize": bool(normalize), **info}
    os.makedirs(output_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".save-tmp-", dir=output_dir)
    try:
        tokenizer.save_pretrained(tmp)
        save_file({"embeddings": embeddings, "pooled": pooled}, os.path.join(tmp, WEIGHTS_FILE))
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        umask = os.umask(0)
        os.umask(umask)
        for name in sorted(os.listdir(tmp), key=lambda n: n == "config.json"):  # config.json last: it marks the kind
            os.chmod(os.path.join(tmp, name), 0o666 & ~umask)
            os.replace(os.path.join(tmp, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    card_config = SimpleNamespace(model_type=MODEL_TYPE, num_hidden_layers=0, hidden_size=config["hidden_size"],
                                  num_attention_heads=0, vocab_size=config["vocab_size"],
                                  load_with="kdcore.static_token_embedding.load_static_folder(folder)")
    write_model_card(output_dir, card_config)


def load_static_folder(path: str, argname: str = "--model_dir"):
    """(StaticTokenEmbedding, tokenizer, config dict) of a static token embedding folder; every defect (a config
    that is not a static embedding's, a damaged or mis-shaped table, non-finite values, a tokenizer of another
    vocabulary size) is a UserError naming the folder."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    from transformers import PreTrainedTokenizerFast

    config = read_json_file(os.path.join(path, "config.json"), argname, "static embedding config")
    if not isinstance(config, dict) or config.get("model_type") != MODEL_TYPE:
        raise UserError(f"{argname} {path}: config.json is not a static embedding's (model_type {MODEL_TYPE!r})")
    size = {k: config.get(k) for k in ("vocab_size", "hidden_size")}
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size.values()):
        raise UserError(f"{argname} {path}: config.json: vocab_size and hidden_size must be positive integers, "
                        f"got {size}")
    if config.get("pooling", "mean") != "mean" or not isinstance(config.get("normalize", True), bool):
        raise UserError(f"{argname} {path}: config.json: pooling must be 'mean' and normalize true or false")
    weights = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(weights):
        raise UserError(f"{argname} {path}: no {WEIGHTS_FILE}")
    try:
        tensors = load_file(weights)
    except (OSError, SafetensorError) as err:
        raise UserError(f"{argname} {weights}: cannot read ({' '.join(str(err).split())[:200]})")
    table, pooled = tensors.get("embeddings"), tensors.get("pooled")
    want = (size["vocab_size"], size["hidden_size"])
    if table is None or pooled is None or table.shape != want or pooled.shape != want[:1]:
        raise UserError(f"{argname} {weights}: expected 'embeddings' {want} and 'pooled' ({want[0]},), got "
                        f"{ {k: v.shape for k, v in tensors.items()} }")
    if not np.issubdtype(table.dtype, np.floating) or not np.isfinite(table).all():
        raise UserError(f"{argname} {weights}: 'embeddings' must hold finite floating-point numbers")
    if not np.isin(pooled, (0, 1)).all() or not pooled.any():
        raise UserError(f"{argname} {weights}: 'pooled' must be 0/1 flags with at least one token pooled")
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise UserError(f"{argname} {path}: no tokenizer.json")
    # The generic fast-tokenizer class reads tokenizer.json alone (normaliser, pre-tokenizer, vocabulary, the
    # [CLS]/[SEP] template); AutoTokenizer would also read config.json, which is not a transformers config here.
    tokenizer = hf_from_pretrained(PreTrainedTokenizerFast, path, argname)
    if len(tokenizer) != want[0]:
        raise UserError(f"{argname} {path}: the tokenizer has {len(tokenizer)} tokens, the table {want[0]} rows")
    model = StaticTokenEmbedding(torch.from_numpy(table.astype(np.float32)), torch.from_numpy(pooled),
                                 normalize=config.get("normalize", True))
    return model.eval(), tokenizer, config

