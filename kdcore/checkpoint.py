"""Checkpoints of a training run: save, verify, resume, prune, list.

A checkpoint `OUTPUT_DIR/<prefix>-<step>/` holds everything needed to continue exactly:

    <the model folder>               what `save_model_fn` writes (a save_pretrained folder, extras beside it)
    objective_state.safetensors      every trainable tensor of the objective (never a frozen teacher)
    optimizer.pt                     the optimizer state (read back with weights_only=True)
    rng_state.safetensors            torch / CUDA generator states of every rank
    training_state.json              step, epoch, data position, best metric, eval history, world size,
                                     scheduler, grad scaler, python / numpy RNG states

It is written into a temporary folder and renamed into place, so a crash leaves the previous checkpoint or none,
never half of one; a folder without `training_state.json` is not a checkpoint.
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .cli import UserError
from .modeling import atomic_dir

TRAINING_STATE = "training_state.json"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model, nn.parallel.DistributedDataParallel) else model


def trainable_state_dict(model: nn.Module) -> dict:
    """The objective's state, ready for safetensors (a DistillObjective's teacher is not in it, see kdcore.objective).

    A tensor shared under two names (an LM decoder tied to the word embeddings) is cloned for its second name:
    safetensors refuses shared storage, and loading copies the same values into the one tied parameter twice.
    """
    state, seen = {}, set()
    for k, v in unwrap(model).state_dict().items():
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


def gather_rng(rt) -> list[dict]:
    mine = {"torch": {"torch": torch.get_rng_state()}, "other": _rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            mine["torch"][f"cuda_{i}"] = s
    if not rt.distributed:
        return [mine]
    gathered = [None] * rt.world_size
    dist.all_gather_object(gathered, mine)
    return gathered


CHECKPOINT_FILES = ("objective_state.safetensors", "optimizer.pt", "rng_state.safetensors")


def verify_checkpoint(path: str, argname: str = "--resume_from_checkpoint") -> dict:
    """The training state of a complete checkpoint; a clear error naming what is missing otherwise."""
    try:
        with open(os.path.join(path, TRAINING_STATE)) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"{argname} {path}: not a complete checkpoint ({err})")
    missing = [name for name in CHECKPOINT_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise UserError(f"{argname} {path}: not a complete checkpoint (no {', '.join(missing)})")
    return saved


def load_checkpoint(path, rt, model, optimizer, scheduler) -> TrainState:
    """Restore model, optimizer, scheduler, scaler and this rank's RNG states; returns where training stood."""
    from safetensors.torch import load_file

    saved = verify_checkpoint(path)
    if saved["world_size"] != rt.world_size:
        raise UserError(
            f"--resume_from_checkpoint {path}: saved with {saved['world_size']} processes, resuming with "
            f"{rt.world_size}; exact resume needs the same world size"
        )
    objective = load_file(os.path.join(path, "objective_state.safetensors"))
    missing, unexpected = unwrap(model).load_state_dict(objective, strict=False)
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


def prune_checkpoints(output_dir: str, prefix: str, limit: int | None) -> None:
    """Delete all but the newest `limit` checkpoints (no limit: keep all)."""
    if not limit or limit <= 0:
        return
    for old in list_checkpoints(output_dir, prefix)[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


def resolve_resume(args, prefix: str) -> str | None:
    """The checkpoint --resume_from_checkpoint asks for: auto (the newest in --output_dir, if any), a path, or none."""
    choice = getattr(args, "resume_from_checkpoint", "auto")
    if choice in (None, "", "none", "None"):
        return None
    if choice == "auto":
        found = list_checkpoints(args.output_dir, prefix)
        return found[-1] if found else None
    if not os.path.isfile(os.path.join(choice, TRAINING_STATE)):
        raise UserError(f"--resume_from_checkpoint {choice}: no {TRAINING_STATE} there")
    return choice
