"""Pieces that keep resuming safe on several nodes and across a change of the number of processes.

* Rank 0 alone decides which checkpoint to resume from and sends its files' bytes to the other ranks
  (`broadcast_bytes`), so nodes without a shared filesystem (or with a stale view of it) cannot disagree and
  need no copy of the checkpoint.
* The data position is the number of samples of the epoch's global order already consumed (`remaining_order`):
  with the same world size a resumed rank continues exactly where it stopped; with another one the remaining
  samples of the epoch are dealt out again, none repeated, none skipped.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


def broadcast_bytes(data: bytes | None, src: int = 0, device: torch.device | None = None) -> bytes:
    """`data` of rank `src`, on every rank (a no-op outside a process group). Raw bytes travel as a uint8
    tensor: nothing is pickled. `device` must be the device of the process group's backend (cuda for nccl)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return data if data is not None else b""
    device = device or torch.device("cpu")
    is_src = dist.get_rank() == src
    size = torch.tensor([len(data) if is_src else 0], dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    n = int(size.item())
    if is_src:
        buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if n else None
    else:
        buf = torch.empty(n, dtype=torch.uint8, device=device)
    if n:
        dist.broadcast(buf, src)
    return data if is_src else bytes(buf.cpu().numpy().tobytes())


def broadcast_str(text: str | None, src: int = 0, device: torch.device | None = None) -> str:
    """`text` of rank `src` on every rank ("" for None)."""
    return broadcast_bytes((text or "").encode("utf-8"), src, device).decode("utf-8")


def epoch_permutation(num_examples: int, epoch: int, seed: int, shuffle: bool = True) -> list[int]:
    """The global order of `epoch`: a permutation seeded by seed + epoch (DistributedSampler's rule)."""
    if not shuffle:
        return list(range(num_examples))
    g = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_examples, generator=g).tolist()


def remaining_order(num_examples: int, epoch: int, seed: int, rank: int, world_size: int, consumed: int = 0,
                    shuffle: bool = True) -> list[int]:
    """This rank's examples of `epoch` once the first `consumed` samples of the global order are used.

    The global order P is epoch_permutation; the remaining samples P[consumed:] are padded with P's first
    samples to a multiple of the world size and rank r takes every world_size-th one from r on. With consumed = 0
    this is DistributedSampler's split. Because ranks take strided samples and all consume equal-sized batches,
    after b batches of B per rank exactly the first b * B * world_size samples of P are used; hence with the same
    world size the remaining order of a rank is its old order minus what it consumed (exact resume), and with
    another world size the rest of the epoch is shared out without a sample repeated or skipped.
    """
    order = epoch_permutation(num_examples, epoch, seed, shuffle)
    rest = order[consumed:] if consumed < num_examples else []
    if not rest:
        return []
    total = math.ceil(len(rest) / world_size) * world_size
    rest += order[: total - len(rest)]
    return rest[rank:total:world_size]
