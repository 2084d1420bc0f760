"""Working on (B, H, T, T) maps of pairwise token scores a chunk at a time.

The attention losses (MiniLM's KLs, TinyBERT's score MSE) compare T x T maps built from per-head (B, H, T, d)
operands. Building the whole (B, H, T, T) map costs B H T^2 floats per tensor alive; instead the losses walk over
chunks of heads (and of examples) and compute value and gradient per chunk in their forward pass.
"""
from __future__ import annotations

import torch

# Elements of one (examples x heads x T x T) fp32 chunk: 2**20 = 4 MiB; about four such tensors are alive at once.
# The softmax / exp / product passes are memory-bound: chunks that stay in the CPU's caches run up to twice as fast
# as 64 MiB ones (bench/bench_relation_loss.py --chunk_elements), and bigger ones gain nothing on a GPU.
MAX_CHUNK_ELEMENTS = 2**20


def map_chunks(batch: int, heads: int, seq_len: int, max_elements: int) -> list[tuple[slice, slice]]:
    """(example slice, head slice) pairs covering B x H, each chunk holding at most max(max_elements, T*T)
    elements of a T x T map: whole batches of several heads when they fit, else fewer examples of one head."""
    per_head = batch * seq_len * seq_len
    if per_head <= max_elements:
        step = max(1, max_elements // per_head)
        return [(slice(0, batch), slice(h, min(h + step, heads))) for h in range(0, heads, step)]
    step = max(1, max_elements // (seq_len * seq_len))
    return [(slice(b, min(b + step, batch)), slice(h, h + 1)) for h in range(heads) for b in range(0, batch, step)]


def fp32_only(device: torch.device):
    """Context manager that turns autocast off on `device`, so matmul/softmax inside really run in float32."""
    return torch.autocast(device_type=device.type, enabled=False)
