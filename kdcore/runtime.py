"""What every training script shares before the loop: its options, and the process it runs in.

    parser = argparse.ArgumentParser(); add_runtime_args(parser)       # optimiser, precision, checkpoints, DDP
    args = parse_args(parser)
    rt = Runtime(args)                                                  # process group, device, seeds, precision

The loop itself is kdcore.trainer; checkpoints are kdcore.checkpoint.
"""
from __future__ import annotations

import argparse
import atexit
import ctypes
import datetime
import logging
import os
import platform
import random
import sys
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

from .errors import UserError
from .cli import declaring

logger = logging.getLogger("kd.runtime")


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------
def add_runtime_args(parser: argparse.ArgumentParser, defaults: dict | None = None, aliases: dict | None = None):
    """Add the optimisation / precision / checkpoint / distributed options shared by every training script.

    `defaults` overrides default values (e.g. {"learning_rate": 5e-5}); `aliases` maps a destination to extra
    option strings, so a script can accept the seed README's spelling (e.g. {"max_steps": ["--num_training_steps"]}).
    """
    aliases = aliases or {}

    add_argument = declaring(parser.add_argument)

    def add(*names, dest, **kw):
        add_argument(*names, *aliases.get(dest, []), dest=dest, **kw)

    g = parser.add_argument_group("training runtime")
    add("--output_dir", dest="output_dir", required=True, help="Where checkpoints, logs and the final model go.",
        identifies=False)
    add("--seed", dest="seed", type=int, default=42, identifies=True, range="[0,4294967295]")
    add("--learning_rate", dest="learning_rate", type=float, default=5e-5, identifies=True, range=">=0")
    add("--weight_decay", dest="weight_decay", type=float, default=0.0,
        help="AdamW weight decay; never applied to biases and LayerNorm weights.", identifies=True, range=">=0")
    add("--adam_epsilon", dest="adam_epsilon", type=float, default=1e-8, identifies=True, range=">0")
    add("--adam_beta1", dest="adam_beta1", type=float, default=0.9, identifies=True, range="[0,1)")
    add("--adam_beta2", dest="adam_beta2", type=float, default=0.999, identifies=True, range="[0,1)")
    add("--warmup_proportion", dest="warmup_proportion", type=float, default=0.1,
        help="Fraction of the optimisation steps spent in linear warmup.", identifies=True, range="[0,1]")
    add("--num_warmup_steps", "--warmup_steps", dest="num_warmup_steps", type=int, default=None,
        help="Warmup steps; overrides --warmup_proportion.", identifies=True, range=">=0")
    add("--lr_schedule", dest="lr_schedule", default="linear", choices=["linear", "constant"],
        help="'linear': warmup then linear decay to 0; 'constant': warmup then a constant rate "
        "(TinyBERT's intermediate-layer stage used a constant rate).", identifies=True)
    add("--gradient_accumulation_steps", dest="gradient_accumulation_steps", type=int, default=1,
        identifies=True, range=">=1")
    add("--max_grad_norm", dest="max_grad_norm", type=float, default=1.0,
        help="Global-norm gradient clipping (<= 0 disables).", identifies=True, range="any")
    add("--max_steps", dest="max_steps", type=int, default=-1,
        help="Stop after this many optimisation steps (overrides the epoch count when > 0).",
        identifies=True, range=">=1 or -1,0")
    add("--save_steps", dest="save_steps", type=int, default=0, help="Checkpoint every N steps (0: only at the end).",
        identifies=False, range=">=0")
    add("--save_total_limit", dest="save_total_limit", type=int, default=None,
        help="Keep at most this many checkpoints (oldest deleted first).", identifies=False, range=">=1")
    add("--resume_from_checkpoint", dest="resume_from_checkpoint", default="auto",
        help="'auto' (default): resume from the newest checkpoint in --output_dir if there is one; "
        "a checkpoint folder; or 'none'.", identifies=False)
    add("--logging_steps", dest="logging_steps", type=int, default=50,
        help="every N optimizer steps, append the loss terms to OUTPUT_DIR/train_log.jsonl and to TensorBoard "
             "(OUTPUT_DIR/runs; tensorboard is installed by the setup command)", identifies=False, range=">=1")
    add("--fp16", dest="fp16", action="store_true",
        help="float16 autocast + dynamic loss scaling (CUDA only; on CPU the run stops with an error, use --bf16).",
        identifies=True)
    add("--fp16_opt_level", dest="fp16_opt_level", default="O1", choices=["O0", "O1", "O2", "O3"],
        help="Accepted for compatibility with the apex-based originals. apex is not used: O1 and O2 both mean "
        "torch.amp autocast with fp32 master weights (O2's fp16 weights are not reproduced); O0 means fp32.",
        identifies=True)
    add("--bf16", dest="bf16", action="store_true", help="bfloat16 autocast (CPU and CUDA).", identifies=True)
    add("--no_cuda", dest="no_cuda", action="store_true", help="Run on CPU even when CUDA is available.",
        identifies=False)
    add("--local_rank", "--local-rank", dest="local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", -1)),
        help="Set by torch.distributed.launch; torchrun passes LOCAL_RANK in the environment instead.",
        identifies=False, range=">=-1")
    add("--dataloader_num_workers", dest="dataloader_num_workers", type=int, default=0, identifies=False, range=">=0")
    add("--ddp_timeout", dest="ddp_timeout", type=int, default=1800,
        help="Seconds a process waits for the others in a collective (checkpoint broadcast, barrier) before failing.",
        identifies=False, range=">=1")
    add("--tf32", dest="tf32", action="store_true",
        help="CUDA: let float32 matmuls and convolutions use TF32 tensor cores (Ampere or newer); no effect on CPU.",
        identifies=True)
    if defaults:
        parser.set_defaults(**defaults)
    return g


# --------------------------------------------------------------------------------------------------------------
# Process group, device, precision
# --------------------------------------------------------------------------------------------------------------
def cpu_model_and_flags() -> tuple[str, set[str]]:
    """The CPU's model name and its feature flags, read once from /proc/cpuinfo (elsewhere: platform's name, no
    flags)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        pass
    return model, flags


def keep_freed_memory_for_reuse() -> bool:
    """Make glibc's malloc keep freed memory in the process instead of handing it back to the OS.

    PyTorch has no caching allocator on CPU: every step allocates its activations and gradients afresh (the word
    embedding's gradient alone is 47 MB for a BERT vocabulary) and frees them at the end. glibc serves blocks above
    its mmap threshold with fresh mmap'd pages and unmaps them on free, so each step pays a page fault for every
    4 KiB it touches again (measured: zeroing a fresh 30522 x 384 float tensor 40 ms, an existing one 4 ms). With
    mmap off (M_MMAP_MAX = 0) and trimming all but off (M_TRIM_THRESHOLD = 2 GiB, the largest int), freed blocks
    stay in the heap and the next step reuses them; the process keeps its peak size, as a GPU caching allocator
    does. glibc on Linux only, on CPU; KD_KEEP_FREED_MEMORY=0 turns it off. Returns whether it was applied.
    """
    if os.environ.get("KD_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no glibc mallopt
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))  # an int: the largest


class Runtime:
    """Distributed setup, device, seeding and mixed precision for one process."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        use_cuda = torch.cuda.is_available() and not getattr(args, "no_cuda", False)
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = getattr(args, "local_rank", -1)
        if local_rank is None or local_rank < 0:
            local_rank = int(os.environ.get("LOCAL_RANK", "-1"))
        # torchrun and `python -m torch.distributed.launch` both export WORLD_SIZE / RANK / MASTER_ADDR.
        self.distributed = world_size > 1
        if self.distributed:
            if use_cuda:
                torch.cuda.set_device(local_rank)
            if not dist.is_initialized():
                timeout = getattr(args, "ddp_timeout", None)
                if timeout is not None and timeout <= 0:
                    raise UserError(f"--ddp_timeout must be a positive number of seconds, got {timeout}")
                dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                        timeout=datetime.timedelta(seconds=timeout) if timeout else None)
                # Left to the interpreter's shutdown, the process group's threads can be torn down while still
                # running, which aborts the process ("terminate called without an active exception") after a
                # run that succeeded. Closing it at exit, before that teardown, gives a clean exit code.
                atexit.register(_close_process_group)
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world_size = 0, 1
        self.local_rank = max(local_rank, 0)
        self.device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        self.is_main = self.rank == 0
        if self.device.type == "cpu":
            keep_freed_memory_for_reuse()
        if getattr(args, "tf32", False) and use_cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

        self.fp16 = bool(getattr(args, "fp16", False)) and getattr(args, "fp16_opt_level", "O1") != "O0"
        self.bf16 = bool(getattr(args, "bf16", False))
        if self.fp16 and self.bf16:
            raise UserError("--fp16 and --bf16 are exclusive: pick one")
        # KD_FP16_ON_CPU=1 runs the fp16 path (float16 autocast + gradient scaler) on CPU: slow and of no use for
        # training, but it lets the tests and `bench/gpu_check.py --dry` exercise that logic without a GPU.
        fp16_on_cpu = os.environ.get("KD_FP16_ON_CPU") == "1"
        if self.fp16 and self.device.type != "cuda" and not fp16_on_cpu:
            raise UserError(
                "--fp16 needs a CUDA GPU (float16 autocast with loss scaling); this run is on CPU. "
                "Use --bf16 for mixed precision on CPU, or drop --fp16."
            )
        self.amp_dtype = torch.float16 if self.fp16 else torch.bfloat16 if self.bf16 else None
        self.scaler = torch.amp.GradScaler(self.device.type) if self.fp16 else None
        set_seed(getattr(args, "seed", 42))
        if self.is_main:
            logger.info(
                "device %s, world size %d, precision %s",
                self.device, self.world_size, {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp_dtype],
            )

    def autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def batch_to_device(self, batch):
        if isinstance(batch, dict):
            return {k: self.batch_to_device(v) for k, v in batch.items()}
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        return batch


def _close_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


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
