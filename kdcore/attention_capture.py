"""Q / K / V capture without eager attention, and attention rebuilt from it.

* `SelfAttentionCapture` – forward hooks on the query/key/value projections of chosen layers (where the
  model-family table, kdcore/families.py, says they live), so the losses can read per-head Q, K, V while the model
  keeps its fast SDPA attention. (HF's `output_attentions` is empty under SDPA and is taken after dropout in train
  mode, so it is never used here.)
* `attention_scores` / `attention_probs` – QK^T/sqrt(d) (+ padding mask) rebuilt from captured Q, K.

`SelfAttentionCapture.run` stops the forward pass as soon as every requested projection is recorded: what a
model computes after the last Q/K/V it is read for (the rest of that layer, the layers above, the pooler) is
never needed by MiniLM's losses, and not computing it saves about 6 % of a MiniLM / MiniLMv2 step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import UserError
from .families import family_of, get_path
from .modeling import bare_model, encoder_layers


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, T, H*d) -> (B, H, T, d)."""
    b, t, hd = x.shape
    return x.view(b, t, num_heads, hd // num_heads).transpose(1, 2)


class CaptureComplete(Exception):
    """Raised by a hook once every requested projection is recorded; `SelfAttentionCapture.run` catches it."""


@dataclass
class CapturedLayer:
    query: torch.Tensor | None = None  # (B, H, T, d)
    key: torch.Tensor | None = None
    value: torch.Tensor | None = None


@dataclass
class SelfAttentionCapture:
    """Forward hooks that record the per-head query/key/value projections of chosen layers.

    Usage::

        with SelfAttentionCapture(model, layers=[5], parts=("query", "key")) as cap:
            out = model(**batch, output_hidden_states=True)
        q, k = cap[5].query, cap[5].key          # (B, H, T, d), with grad if the model has grad

        with SelfAttentionCapture(model, layers=[5]) as cap:
            cap.run(**batch)                     # the forward stops once layer 5's Q, K, V are recorded

    Only the listed layers and parts are hooked, so nothing else is kept alive. Attention itself still runs in
    whatever implementation the model was loaded with (SDPA by default).
    """

    model: nn.Module
    layers: list[int]
    parts: tuple[str, ...] = ("query", "key", "value")
    captured: dict[int, CapturedLayer] = field(default_factory=dict)

    def __post_init__(self):
        blocks = encoder_layers(self.model)
        n = len(blocks)
        self.layers = [layer % n if layer < 0 else layer for layer in self.layers]
        for layer in self.layers:
            if not 0 <= layer < n:
                raise UserError(f"layer {layer} does not exist: the model has {n} layers")
        unknown = set(self.parts) - {"query", "key", "value"}
        if unknown:
            raise ValueError(f"unknown parts {unknown}")
        config = bare_model(self.model).config
        self._family = family_of(config)
        self._heads = config.num_attention_heads
        self._blocks = blocks
        self._handles = []
        self._stop_when_complete = False

    def run(self, **inputs) -> None:
        """Run the model only as far as the hooked projections: the forward stops once all are recorded."""
        self._stop_when_complete = True
        try:
            self.model(**inputs)
        except CaptureComplete:
            pass
        finally:
            self._stop_when_complete = False
        missing = [(layer, part) for layer in self.layers for part in self.parts
                   if getattr(self.captured[layer], part) is None]
        if missing:
            raise RuntimeError(f"the forward pass never reached the projections {missing}")

    def _check_complete(self) -> None:
        if self._stop_when_complete and all(getattr(self.captured[layer], part) is not None
                                            for layer in self.layers for part in self.parts):
            raise CaptureComplete

    def __enter__(self):
        self.captured = {layer: CapturedLayer() for layer in self.layers}
        family = self._family
        for layer in self.layers:
            block = self._blocks[layer]
            if family.fused():  # one projection [Q; K; V] (ModernBERT's Wqkv)
                hook = self._fused_hook(layer)
                self._handles.append(get_path(block, family.qkv).register_forward_hook(hook))
                continue
            for part, path in zip(("query", "key", "value"), family.qkv):
                if part in self.parts:
                    self._handles.append(get_path(block, path).register_forward_hook(self._hook(layer, part)))
        return self

    def _hook(self, layer: int, part: str):
        def hook(module, inputs, output):
            # The first call is the token projection; DeBERTa calls query_proj / key_proj again on its relative
            # position embeddings within the same forward, which must not overwrite it.
            if getattr(self.captured[layer], part) is None:
                setattr(self.captured[layer], part, split_heads(output, self._heads))
                self._check_complete()

        return hook

    def _fused_hook(self, layer: int):
        def hook(module, inputs, output):
            for part, chunk in zip(("query", "key", "value"), output.chunk(3, dim=-1)):
                if part in self.parts and getattr(self.captured[layer], part) is None:
                    setattr(self.captured[layer], part, split_heads(chunk, self._heads))
            self._check_complete()

        return hook

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def __getitem__(self, layer: int) -> CapturedLayer:
        n = len(self._blocks)
        return self.captured[layer % n if layer < 0 else layer]


def attention_scores(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Raw attention scores QK^T / sqrt(d), (B, H, T, T), computed in fp32.

    With `attention_mask` (B, T; 1 = real token) padded keys get -inf, exactly what softmax ignores.
    """
    d = query.size(-1)
    # Autocast would cast the fp32 operands back to bf16/fp16 for the matmul: switch it off here.
    with torch.autocast(device_type=query.device.type, enabled=False):
        scores = torch.matmul(query.float(), key.float().transpose(-1, -2)) / math.sqrt(d)
    if attention_mask is not None:
        scores = scores.masked_fill(~attention_mask.bool()[:, None, None, :], float("-inf"))
    return scores


def attention_probs(query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) over real keys, (B, H, T, T), fp32."""
    return torch.softmax(attention_scores(query, key, attention_mask), dim=-1)
