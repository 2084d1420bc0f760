"""The one training runtime every script uses.

    parser = argparse.ArgumentParser(); add_runtime_args(parser)       # optimiser, precision, checkpoints, DDP
    args = parse_args(parser)
    rt = Runtime(args)                                                  # process group, device, seeds, precision
    result = train(rt, args, objective, dataset, collate_fn, batch_size, num_train_epochs, save_model_fn)

`objective` is an nn.Module whose forward(**batch) returns a dict of scalar tensors: "loss" is back-propagated,
every other entry is logged. A frozen teacher may be registered on it as `teacher`: it is left out of
checkpoints, and DDP (which only reduces parameters that require grad) does not sync it.

What the loop guarantees:
* the data order is a pure function of (seed, epoch), as in DistributedSampler, so a resumed run sees exactly the
  batches an uninterrupted run would, and a 2-process run sees the same global batches as a 1-process run;
* checkpoints hold model, optimizer, scheduler, grad scaler, every RNG state and the data position, written to a
  temporary folder and renamed into place; on CPU a resumed run ends bit-identical to an uninterrupted one;
* every trainable module is inside the one DDP wrapper (the original TinyBERT wrapped only the teacher).
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import math
import os
import random
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from .cli import UserError, ensure_writable_dir
from .modeling import atomic_dir

logger = logging.getLogger("kd.runtime")

FROZEN_ATTRIBUTE = "teacher"  # submodule name that is never trained, synced or checkpointed
TRAINING_STATE = "training_state.json"


# --------------------------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------------------------
def add_runtime_args(parser: argparse.ArgumentParser, defaults: dict | None = None, aliases: dict | None = None):
    """Add the optimisation / precision / checkpoint / distributed options shared by every training script.

    `defaults` overrides default values (e.g. {"learning_rate": 5e-5}); `aliases` maps a destination to extra
    option strings, so a script can accept the seed README's spelling (e.g. {"max_steps": ["--num_training_steps"]}).
    """
    aliases = aliases or {}

    def add(*names, dest, **kw):
        parser.add_argument(*names, *aliases.get(dest, []), dest=dest, **kw)

    g = parser.add_argument_group("training runtime")
    add("--output_dir", dest="output_dir", required=True, help="Where checkpoints, logs and the final model go.")
    add("--seed", dest="seed", type=int, default=42)
    add("--learning_rate", dest="learning_rate", type=float, default=5e-5)
    add("--weight_decay", dest="weight_decay", type=float, default=0.0,
        help="AdamW weight decay; never applied to biases and LayerNorm weights.")
    add("--adam_epsilon", dest="adam_epsilon", type=float, default=1e-8)
    add("--adam_beta1", dest="adam_beta1", type=float, default=0.9)
    add("--adam_beta2", dest="adam_beta2", type=float, default=0.999)
    add("--warmup_proportion", dest="warmup_proportion", type=float, default=0.1,
        help="Fraction of the optimisation steps spent in linear warmup.")
    add("--num_warmup_steps", "--warmup_steps", dest="num_warmup_steps", type=int, default=None,
        help="Warmup steps; overrides --warmup_proportion.")
    add("--lr_schedule", dest="lr_schedule", default="linear", choices=["linear", "constant"],
        help="'linear': warmup then linear decay to 0; 'constant': warmup then a constant rate "
        "(TinyBERT's intermediate-layer stage used a constant rate).")
    add("--gradient_accumulation_steps", dest="gradient_accumulation_steps", type=int, default=1)
    add("--max_grad_norm", dest="max_grad_norm", type=float, default=1.0,
        help="Global-norm gradient clipping (<= 0 disables).")
    add("--max_steps", dest="max_steps", type=int, default=-1,
        help="Stop after this many optimisation steps (overrides the epoch count when > 0).")
    add("--save_steps", dest="save_steps", type=int, default=0, help="Checkpoint every N steps (0: only at the end).")
    add("--save_total_limit", dest="save_total_limit", type=int, default=None,
        help="Keep at most this many checkpoints (oldest deleted first).")
    add("--resume_from_checkpoint", dest="resume_from_checkpoint", default="auto",
        help="'auto' (default): resume from the newest checkpoint in --output_dir if there is one; "
        "a checkpoint folder; or 'none'.")
    add("--logging_steps", dest="logging_steps", type=int, default=50,
        help="every N optimizer steps, append the loss terms to OUTPUT_DIR/train_log.jsonl and to TensorBoard "
             "(OUTPUT_DIR/runs; tensorboard is installed by the setup command)")
    add("--fp16", dest="fp16", action="store_true",
        help="float16 autocast + dynamic loss scaling (CUDA only; on CPU the run stops with an error, use --bf16).")
    add("--fp16_opt_level", dest="fp16_opt_level", default="O1", choices=["O0", "O1", "O2", "O3"],
        help="Accepted for compatibility with the apex-based originals. apex is not used: O1 and O2 both mean "
        "torch.amp autocast with fp32 master weights (O2's fp16 weights are not reproduced); O0 means fp32.")
    add("--bf16", dest="bf16", action="store_true", help="bfloat16 autocast (CPU and CUDA).")
    add("--no_cuda", dest="no_cuda", action="store_true", help="Run on CPU even when CUDA is available.")
    add("--local_rank", "--local-rank", dest="local_rank", type=int, default=int(os.environ.get("LOCAL_RANK", -1)),
        help="Set by torch.distributed.launch; torchrun passes LOCAL_RANK in the environment instead.")
    add("--dataloader_num_workers", dest="dataloader_num_workers", type=int, default=0)
    if defaults:
        parser.set_defaults(**defaults)
    return g


# --------------------------------------------------------------------------------------------------------------
# Process group, device, precision
# --------------------------------------------------------------------------------------------------------------
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
                dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        else:
            self.rank, self.world_size = 0, 1
        self.local_rank = max(local_rank, 0)
        self.device = torch.device("cuda", self.local_rank) if use_cuda else torch.device("cpu")
        self.is_main = self.rank == 0

        self.fp16 = bool(getattr(args, "fp16", False)) and getattr(args, "fp16_opt_level", "O1") != "O0"
        self.bf16 = bool(getattr(args, "bf16", False))
        if self.fp16 and self.bf16:
            raise UserError("--fp16 and --bf16 are exclusive: pick one")
        if self.fp16 and self.device.type != "cuda":
            raise UserError(
                "--fp16 needs a CUDA GPU (float16 autocast with loss scaling); this run is on CPU. "
                "Use --bf16 for mixed precision on CPU, or drop --fp16."
            )
        self.amp_dtype = torch.float16 if self.fp16 else torch.bfloat16 if self.bf16 else None
        self.scaler = torch.amp.GradScaler("cuda") if self.fp16 else None
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

    def to_device(self, module: nn.Module) -> nn.Module:
        return module.to(self.device)

    def batch_to_device(self, batch):
        if isinstance(batch, dict):
            return {k: self.batch_to_device(v) for k, v in batch.items()}
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device, non_blocking=True)
        return batch


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


# --------------------------------------------------------------------------------------------------------------
# Optimiser and schedule
# --------------------------------------------------------------------------------------------------------------
def build_optimizer(model: nn.Module, args) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights (1-D parameters) get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )


def linear_schedule(optimizer, num_warmup_steps: int, num_training_steps: int, decay: bool = True):
    """lr factor: step/warmup during warmup, then linear decay to 0 at num_training_steps (or 1 if not decay)."""

    def factor(step: int) -> float:
        if step < num_warmup_steps:
            return step / max(1, num_warmup_steps)
        if not decay:
            return 1.0
        return max(0.0, (num_training_steps - step) / max(1, num_training_steps - num_warmup_steps))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# --------------------------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------------------------
def epoch_indices(num_examples: int, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool = True) -> list[int]:
    """This rank's example order for `epoch`: a permutation seeded by seed+epoch, padded to a multiple of the
    world size and strided by rank (DistributedSampler's rule), so rank r gets perm[r::world_size]."""
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(num_examples, generator=g).tolist()
    else:
        order = list(range(num_examples))
    total = math.ceil(num_examples / world_size) * world_size
    order += order[: total - num_examples]
    return order[rank:total:world_size]


# --------------------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------------------
def trainable_state_dict(model: nn.Module) -> dict:
    """The objective's state without the frozen teacher, ready for safetensors.

    A tensor shared under two names (an LM decoder tied to the word embeddings) is cloned for its second name:
    safetensors refuses shared storage, and loading copies the same values into the one tied parameter twice.
    """
    state, seen = {}, set()
    for k, v in unwrap(model).state_dict().items():
        if k.startswith(FROZEN_ATTRIBUTE + "."):
            continue
        ident = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        state[k] = v.detach().clone() if ident in seen else v
        seen.add(ident)
    return state


def _rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return state


def _set_rng_state(state: dict, torch_states: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch_states["torch"])
    if torch.cuda.is_available():
        cuda = [torch_states[k] for k in sorted(torch_states) if k.startswith("cuda_")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


def checkpoint_step(path: str, prefix: str) -> int | None:
    m = re.fullmatch(re.escape(prefix) + r"-(\d+)", os.path.basename(os.path.normpath(path)))
    return int(m.group(1)) if m else None


def list_checkpoints(output_dir: str, prefix: str = "checkpoint") -> list[str]:
    """Complete checkpoints (those with a training state file), oldest first."""
    found = []
    for path in glob.glob(os.path.join(output_dir, f"{prefix}-*")):
        step = checkpoint_step(path, prefix)
        if step is not None and os.path.isfile(os.path.join(path, TRAINING_STATE)):
            found.append((step, path))
    return [p for _, p in sorted(found)]


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this epoch already consumed
    best_metric: float | None = None
    eval_history: list = field(default_factory=list)


def save_checkpoint(path, rt, model, optimizer, scheduler, state: TrainState, save_model_fn, rank_rng: list[dict]):
    """Write everything needed to continue exactly, into a temporary folder renamed to `path` at the end."""
    from safetensors.torch import save_file

    with atomic_dir(path) as tmp:
        save_model_fn(unwrap(model), tmp)
        save_file({k: v.detach().contiguous().cpu() for k, v in trainable_state_dict(model).items()},
                  os.path.join(tmp, "objective_state.safetensors"))
        torch.save(optimizer.state_dict(), os.path.join(tmp, "optimizer.pt"))
        # RNG states of every rank (torch generator states are uint8 tensors; the rest is JSON).
        tensors = {}
        for r, rng in enumerate(rank_rng):
            for k, v in rng["torch"].items():
                tensors[f"rank{r}.{k}"] = v
        save_file(tensors, os.path.join(tmp, "rng_state.safetensors"))
        training_state = {
            "global_step": state.global_step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "best_metric": state.best_metric,
            "eval_history": state.eval_history,
            "world_size": rt.world_size,
            "scheduler": scheduler.state_dict(),
            "scaler": rt.scaler.state_dict() if rt.scaler is not None else None,
            "rng": [rng["other"] for rng in rank_rng],
        }
        with open(os.path.join(tmp, TRAINING_STATE), "w") as f:
            json.dump(training_state, f)


def _gather_rng(rt) -> list[dict]:
    mine = {"torch": {"torch": torch.get_rng_state()}, "other": _rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            mine["torch"][f"cuda_{i}"] = s
    if not rt.distributed:
        return [mine]
    gathered = [None] * rt.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


def load_checkpoint(path, rt, model, optimizer, scheduler) -> TrainState:
    from safetensors.torch import load_file

    try:
        with open(os.path.join(path, TRAINING_STATE)) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"--resume_from_checkpoint {path}: not a complete checkpoint ({err})")
    if saved["world_size"] != rt.world_size:
        raise UserError(
            f"--resume_from_checkpoint {path}: saved with {saved['world_size']} processes, resuming with "
            f"{rt.world_size}; exact resume needs the same world size"
        )
    objective = load_file(os.path.join(path, "objective_state.safetensors"))
    missing, unexpected = unwrap(model).load_state_dict(objective, strict=False)
    missing = [k for k in missing if not k.startswith(FROZEN_ATTRIBUTE + ".")]
    if missing or unexpected:
        raise UserError(f"--resume_from_checkpoint {path}: checkpoint does not fit this model "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), map_location=rt.device, weights_only=True))
    scheduler.load_state_dict(saved["scheduler"])
    if rt.scaler is not None and saved["scaler"] is not None:
        rt.scaler.load_state_dict(saved["scaler"])
    tensors = load_file(os.path.join(path, "rng_state.safetensors"))
    prefix = f"rank{rt.rank}."
    _set_rng_state(saved["rng"][rt.rank], {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return TrainState(saved["global_step"], saved["epoch"], saved["batch_in_epoch"], saved["best_metric"],
                      saved.get("eval_history", []))


def _prune_checkpoints(output_dir: str, prefix: str, limit: int | None) -> None:
    if not limit or limit <= 0:
        return
    for old in list_checkpoints(output_dir, prefix)[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_resume(args, prefix: str) -> str | None:
    choice = getattr(args, "resume_from_checkpoint", "auto")
    if choice in (None, "", "none", "None"):
        return None
    if choice == "auto":
        found = list_checkpoints(args.output_dir, prefix)
        return found[-1] if found else None
    if not os.path.isfile(os.path.join(choice, TRAINING_STATE)):
        raise UserError(f"--resume_from_checkpoint {choice}: no {TRAINING_STATE} there")
    return choice


# --------------------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    global_step: int
    last_losses: dict
    best_metric: float | None
    eval_history: list


class JsonlLogger:
    """Appends one JSON object per line to `train_log.jsonl` (rank 0 only), and to TensorBoard when installed."""

    def __init__(self, output_dir: str, enabled: bool):
        self.path = os.path.join(output_dir, "train_log.jsonl")
        self.enabled = enabled
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(os.path.join(output_dir, "runs"))
            except ImportError:  # tensorboard is declared in requirements.txt; a bare install may still lack it
                self.tb = None

    def log(self, record: dict, truncate_after_step: int | None = None) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def truncate_after(self, step: int) -> None:
        """On resume, drop records written after the checkpoint so the log reads as one continuous run."""
        if not self.enabled or not os.path.isfile(self.path):
            return
        with open(self.path) as f:
            keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(keep)

    def close(self):
        if self.tb is not None:
            self.tb.close()


def _count_tokens(batch) -> int:
    """Real tokens in a batch: from its attention mask, or from per-example `num_*_tokens` counts."""
    if isinstance(batch, dict):
        counts = [v for k, v in batch.items() if k.startswith("num_") and k.endswith("_tokens")]
        if counts:
            return int(sum(int(c.sum()) for c in counts))
        if "attention_mask" in batch and isinstance(batch["attention_mask"], torch.Tensor):
            return int(batch["attention_mask"].sum())
        if "input_ids" in batch and isinstance(batch["input_ids"], torch.Tensor):
            return batch["input_ids"].numel()
    return 0


def train(
    rt: Runtime,
    args,
    model: nn.Module,
    train_dataset,
    collate_fn: Callable,
    batch_size: int,
    num_train_epochs: float,
    save_model_fn: Callable[[nn.Module, str], None],
    evaluate_fn: Callable[[nn.Module, int], dict] | None = None,
    eval_steps: int = 0,
    metric_for_best: str | None = None,
    greater_is_better: bool = True,
    checkpoint_prefix: str = "checkpoint",
    shuffle: bool = True,
) -> TrainResult:
    """Train `model` (an objective returning a dict of losses) and save it; see the module docstring."""
    ensure_writable_dir(args.output_dir)
    accum = max(1, args.gradient_accumulation_steps)
    num_examples = len(train_dataset)
    if num_examples == 0:
        raise UserError("the training set is empty")
    batches_per_epoch = math.ceil(math.ceil(num_examples / rt.world_size) / batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    if args.max_steps and args.max_steps > 0:
        total_steps = args.max_steps
    else:
        total_steps = max(1, math.ceil(steps_per_epoch * num_train_epochs))
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    warmup = args.num_warmup_steps if args.num_warmup_steps is not None else int(args.warmup_proportion * total_steps)

    model = model.to(rt.device)
    model.train()
    frozen = getattr(model, FROZEN_ATTRIBUTE, None)
    if isinstance(frozen, nn.Module):
        frozen.eval()  # the teacher stays in eval mode (no dropout) for the whole run
    optimizer = build_optimizer(model, args)
    scheduler = linear_schedule(optimizer, warmup, total_steps, decay=getattr(args, "lr_schedule", "linear") == "linear")
    state = TrainState()
    resume = resolve_resume(args, checkpoint_prefix)
    if resume:
        state = load_checkpoint(resume, rt, model, optimizer, scheduler)
        if rt.is_main:
            logger.info("resumed from %s (step %d)", resume, state.global_step)
    if rt.distributed:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, broadcast_buffers=False
        )
    log = JsonlLogger(args.output_dir, rt.is_main)
    if resume:
        log.truncate_after(state.global_step)
    elif rt.is_main and os.path.isfile(log.path):
        os.remove(log.path)

    if rt.is_main:
        logger.info("examples %d, batch %d x %d processes x %d accumulation, %d steps (%d warmup)",
                    num_examples, batch_size, rt.world_size, accum, total_steps, warmup)
    progress = tqdm(total=total_steps, initial=state.global_step, disable=not rt.is_main, desc="train", dynamic_ncols=True)
    running: dict[str, float] = {}
    running_count, tokens, t0 = 0, 0, time.time()
    last_losses: dict = {}

    def run_eval_and_maybe_save_best():
        if evaluate_fn is None:
            return
        if rt.is_main:
            unwrapped = unwrap(model)
            unwrapped.eval()
            with torch.no_grad(), rt.autocast():
                metrics = evaluate_fn(unwrapped, state.global_step)
            unwrapped.train()
            if isinstance(frozen, nn.Module):
                frozen.eval()
            record = {"step": state.global_step, **{f"eval_{k}": v for k, v in metrics.items()}}
            state.eval_history.append(record)
            log.log(record)
            if metric_for_best is not None:
                if metric_for_best not in metrics:
                    raise UserError(f"evaluation returned no {metric_for_best!r} (got {sorted(metrics)})")
                value = metrics[metric_for_best]
                better = state.best_metric is None or (value > state.best_metric if greater_is_better else value < state.best_metric)
                if better:
                    state.best_metric = value
                    save_model_fn(unwrapped, args.output_dir)
                    logger.info("step %d: new best %s = %.4f, saved to %s", state.global_step, metric_for_best, value, args.output_dir)
        rt.barrier()

    def checkpoint():
        rng = _gather_rng(rt)  # collective: every rank takes part
        if rt.is_main:
            path = os.path.join(args.output_dir, f"{checkpoint_prefix}-{state.global_step}")
            save_checkpoint(path, rt, model, optimizer, scheduler, state, save_model_fn, rng)
            _prune_checkpoints(args.output_dir, checkpoint_prefix, args.save_total_limit)
        rt.barrier()

    done = state.global_step >= total_steps
    while not done and state.epoch < num_epochs:
        order = epoch_indices(num_examples, state.epoch, args.seed, rt.rank, rt.world_size, shuffle)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        loader = torch.utils.data.DataLoader(
            train_dataset,
            batch_sampler=batches[state.batch_in_epoch :],
            collate_fn=collate_fn,
            num_workers=args.dataloader_num_workers,
            # A private generator: creating the iterator must not draw from the global RNG, or a resumed run
            # (which creates it mid-epoch) would see different dropout masks than an uninterrupted one.
            generator=torch.Generator(),
        )
        for batch in loader:
            micro = state.batch_in_epoch % accum  # position inside the accumulation window
            window = min(accum, len(batches) - (state.batch_in_epoch - micro))  # last window may be short
            is_step = micro == window - 1
            batch = rt.batch_to_device(batch)
            sync = nullcontext() if (is_step or not rt.distributed) else model.no_sync()
            with sync:
                with rt.autocast():
                    losses = model(**batch)
                loss = losses["loss"] / window
                if rt.scaler is not None:
                    rt.scaler.scale(loss).backward()
                else:
                    loss.backward()
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + float(v.detach())
            running_count += 1
            tokens += _count_tokens(batch)
            state.batch_in_epoch += 1
            if not is_step:
                continue

            if rt.scaler is not None:
                rt.scaler.unscale_(optimizer)
            grad_norm = None
            if args.max_grad_norm and args.max_grad_norm > 0:
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm))
            if rt.scaler is not None:
                rt.scaler.step(optimizer)
                rt.scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            progress.update(1)
            last_losses = {k: v / running_count for k, v in running.items()}

            if state.global_step % max(1, args.logging_steps) == 0 or state.global_step == total_steps:
                elapsed = max(time.time() - t0, 1e-9)
                record = {"step": state.global_step, "epoch": state.epoch, "lr": scheduler.get_last_lr()[0],
                          **last_losses, "tokens_per_s": tokens * rt.world_size / elapsed}
                if grad_norm is not None:
                    record["grad_norm"] = grad_norm
                log.log(record)
                progress.set_postfix({k: f"{v:.4f}" for k, v in last_losses.items()})
                running, running_count, tokens, t0 = {}, 0, 0, time.time()

            if eval_steps and state.global_step % eval_steps == 0:
                run_eval_and_maybe_save_best()
            if args.save_steps and state.global_step % args.save_steps == 0 and state.global_step < total_steps:
                checkpoint()
            if state.global_step >= total_steps:
                done = True
                break
        if not done:
            state.epoch += 1
            state.batch_in_epoch = 0
    progress.close()

    if evaluate_fn is not None and not (eval_steps and state.global_step % eval_steps == 0):
        run_eval_and_maybe_save_best()
    if args.save_steps:
        checkpoint()  # a final checkpoint so --eval_all_checkpoints sees the last step too
    if rt.is_main and (metric_for_best is None or evaluate_fn is None):
        save_model_fn(unwrap(model), args.output_dir)
    rt.barrier()
    log.close()
    return TrainResult(state.global_step, last_losses, state.best_metric, state.eval_history)
