"""Checkpoints of a training run: save, verify, resume, prune, list.

A checkpoint `OUTPUT_DIR/<prefix>-<step>/` holds everything needed to continue exactly:

    <the model folder>               what `save_model_fn` writes (a save_pretrained folder, extras beside it)
    objective_state.safetensors      every trainable tensor of the objective (never a frozen teacher)
    optimizer.pt                     the optimizer state (read back with weights_only=True)
    rng_state.safetensors            torch / CUDA generator states of every rank
    training_state.json              step, epoch, data position, best metric, eval history, world size,
                                     scheduler, grad scaler, python / numpy RNG states

It is written into a temporary folder and renamed into place, so a crash leaves the previous checkpoint or none,
never half of one; a folder without `training_state.json` is not a checkpoint. `training_state.json` is written
last and lists the size and SHA-256 of every other file, so damage after the save (a truncated `optimizer.pt`, a
file lost in a copy) is found by `verify_checkpoint` before a resume, which then falls back to the newest good
checkpoint. Temporary folders and files that a killed process leaves behind are swept by `sweep_orphans` (and a
checkpoint caught between the two renames of a replacement is put back). A run's identity (the arguments that
define its model, data and optimisation) is stored too: auto-resume never continues a different run.

Several processes (nodes): rank 0 alone decides which checkpoint to resume from (`agree_on_resume`) and reads its
files; the other ranks receive the bytes (`kdcore.runtime.broadcast_bytes`), so ranks without a shared
filesystem, or with a stale view of it, never disagree and need no copy. The data position is the number of
samples of the epoch's global order consumed, so a run may resume with another number of processes
(`kdcore.trainer.epoch_indices`): with the same number it continues exactly.
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .errors import UserError
from .files import atomic_dir, sha256_file
from .runtime import broadcast_bytes, broadcast_str

TRAINING_STATE = "training_state.json"
logger = logging.getLogger("kd.checkpoint")


class DamagedCheckpoint(UserError):
    """A checkpoint folder that cannot be resumed from (incomplete, truncated or altered files)."""


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
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    for path in (os.path.join(output_dir, n) for n in names):  # listdir, never glob: the path may hold [ or *
        step = checkpoint_step(path, prefix)
        if step is not None and os.path.isfile(os.path.join(path, TRAINING_STATE)):
            found.append((step, path))
    return [p for _, p in sorted(found)]


@dataclass
class TrainState:
    global_step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0  # micro-batches of this process's order for the epoch consumed (from 0 on each resume)
    samples_in_epoch: int = 0  # samples of the epoch's global order consumed, by all processes together
    best_metric: float | None = None
    eval_history: list = field(default_factory=list)


def run_identity(args) -> dict:
    """The values of the options that define a run: its model, data, objective and optimisation. Each option says
    so where it is declared (`identifies=True`, kdcore.cli); parse_args records which ones in `args.identity_keys`.
    A checkpoint made with other values belongs to another run, and resuming it is refused rather than silently
    continued with these arguments."""
    return {k: getattr(args, k) for k in getattr(args, "identity_keys", ()) if hasattr(args, k)}


def _file_digest(path: str) -> dict:
    return {"size": os.path.getsize(path), "sha256": sha256_file(path)}


def _manifest(folder: str) -> dict:
    """Size and SHA-256 of every file in `folder` (relative paths)."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out[os.path.relpath(path, folder)] = _file_digest(path)
    return out


def save_checkpoint(path, rt, model, optimizer, scheduler, state: TrainState, save_model_fn, rank_rng: list[dict],
                    identity: dict | None = None):
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
            "samples_in_epoch": state.samples_in_epoch,
            "best_metric": state.best_metric,
            "eval_history": state.eval_history,
            "world_size": rt.world_size,
            "scheduler": scheduler.state_dict(),
            "scaler": rt.scaler.state_dict() if rt.scaler is not None else None,
            "rng": [rng["other"] for rng in rank_rng],
            "run": identity or {},
            "files": _manifest(tmp),  # written last: what verify_checkpoint checks
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
    """The training state of a complete, undamaged checkpoint; `DamagedCheckpoint` naming what is wrong otherwise.

    Every file listed in the training state must have its recorded size and SHA-256 (checkpoints written before
    the list existed are checked for their files only)."""
    try:
        with open(os.path.join(path, TRAINING_STATE), encoding="utf-8") as f:
            saved = json.load(f)
        if not isinstance(saved, dict) or not isinstance(saved.get("global_step"), int):
            raise ValueError("no global_step")
    except (OSError, ValueError) as err:
        raise DamagedCheckpoint(f"{argname} {path}: not a complete checkpoint ({TRAINING_STATE}: {err})")
    missing = [name for name in CHECKPOINT_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise DamagedCheckpoint(f"{argname} {path}: not a complete checkpoint (no {', '.join(missing)})")
    for name, want in (saved.get("files") or {}).items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise DamagedCheckpoint(f"{argname} {path}: damaged ({name} is missing)")
        size = os.path.getsize(file)
        if size != want["size"]:
            raise DamagedCheckpoint(f"{argname} {path}: damaged ({name} has {size} bytes, {want['size']} were saved)")
        if sha256_file(file) != want["sha256"]:
            raise DamagedCheckpoint(f"{argname} {path}: damaged ({name} differs from what was saved)")
    return saved


def _checkpoint_bytes(path: str, rt) -> dict[str, bytes]:
    """The files load_checkpoint needs: read by rank 0, sent to every other rank."""
    files = {}
    for name in (TRAINING_STATE, *CHECKPOINT_FILES):
        data = None
        if rt.is_main:
            with open(os.path.join(path, name), "rb") as f:
                data = f.read()
        files[name] = broadcast_bytes(data, device=rt.device if rt.device.type == "cuda" else None)
    return files


def load_checkpoint(path, rt, model, optimizer, scheduler, batch_size: int = 0) -> TrainState:
    """Restore model, optimizer, scheduler, scaler and this rank's RNG states; returns where training stood.

    `path` is rank 0's choice (agree_on_resume); only rank 0 reads it. Saved with another number of processes,
    the run goes on from the samples consumed; ranks the checkpoint has no RNG state for keep their fresh seeds.
    `batch_size` (per process) converts the data position of checkpoints that predate samples_in_epoch.
    """
    import io

    from safetensors.torch import load as load_safetensors

    if rt.is_main:
        verify_checkpoint(path)
    files = _checkpoint_bytes(path, rt)
    saved = json.loads(files[TRAINING_STATE].decode("utf-8"))
    objective = load_safetensors(files["objective_state.safetensors"])
    missing, unexpected = unwrap(model).load_state_dict(objective, strict=False)
    if missing or unexpected:
        raise UserError(f"--resume_from_checkpoint {path}: checkpoint does not fit this model "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    optimizer.load_state_dict(torch.load(io.BytesIO(files["optimizer.pt"]), map_location=rt.device, weights_only=True))
    scheduler.load_state_dict(saved["scheduler"])
    if rt.scaler is not None and saved["scaler"] is not None:
        rt.scaler.load_state_dict(saved["scaler"])
    if rt.rank < len(saved["rng"]):
        tensors = load_safetensors(files["rng_state.safetensors"])
        prefix = f"rank{rt.rank}."
        _set_rng_state(saved["rng"][rt.rank], {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    samples = saved.get("samples_in_epoch")
    if samples is None:  # a checkpoint from before samples were counted: batches x batch size x processes
        samples = saved["batch_in_epoch"] * batch_size * saved["world_size"]
    if saved["world_size"] != rt.world_size and rt.is_main:
        logger.warning("%s was saved by %d processes, resuming with %d: continuing after the %d samples of epoch %d "
                       "already consumed (global batch and steps per epoch change with the number of processes)",
                       path, saved["world_size"], rt.world_size, samples, saved["epoch"])
    return TrainState(saved["global_step"], saved["epoch"], 0, samples, saved["best_metric"],
                      saved.get("eval_history", []))


def prune_checkpoints(output_dir: str, prefix: str, limit: int | None) -> None:
    """Delete all but the newest `limit` checkpoints (no limit: keep all)."""
    if not limit or limit <= 0:
        return
    for old in list_checkpoints(output_dir, prefix)[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


def _check_identity(path: str, saved: dict, args) -> None:
    stored, now = saved.get("run") or {}, run_identity(args)
    differ = [k for k in sorted(set(stored) & set(now)) if stored[k] != now[k]]
    if differ:
        k = differ[0]
        raise UserError(
            f"--output_dir {args.output_dir}: {os.path.basename(path)} belongs to a different run (--{k} "
            f"{stored[k]} there, {now[k]} now{f', and {len(differ) - 1} more' if len(differ) > 1 else ''}); rerun "
            "with the same arguments, use another --output_dir, or pass --resume_from_checkpoint none to start over")


def agree_on_resume(args, prefix: str, rt) -> str | None:
    """resolve_resume decided by rank 0 alone and sent to every rank (an error on rank 0 is raised everywhere)."""
    if not rt.distributed:
        return resolve_resume(args, prefix)
    choice, error = None, None
    if rt.is_main:
        try:
            choice = resolve_resume(args, prefix)
        except UserError as err:
            error = str(err)
    message = broadcast_str(json.dumps({"path": choice, "error": error}),
                            device=rt.device if rt.device.type == "cuda" else None)
    decided = json.loads(message)
    if decided["error"]:
        raise UserError(decided["error"])
    return decided["path"]


def resolve_resume(args, prefix: str) -> str | None:
    """The checkpoint --resume_from_checkpoint asks for: auto (the newest good one in --output_dir, if any), a
    path, or none. With auto a damaged checkpoint is skipped, saying so, for the next older one; a checkpoint of a
    different run is an error. A path given explicitly must itself be good."""
    choice = getattr(args, "resume_from_checkpoint", "auto")
    if choice in (None, "", "none", "None"):
        return None
    if choice != "auto":
        if not os.path.isfile(os.path.join(choice, TRAINING_STATE)):
            raise UserError(f"--resume_from_checkpoint {choice}: no {TRAINING_STATE} there")
        verify_checkpoint(choice)
        return choice
    skipped = []
    for path in reversed(list_checkpoints(args.output_dir, prefix)):
        try:
            saved = verify_checkpoint(path, argname="checkpoint")
        except DamagedCheckpoint as err:
            skipped.append(path)
            logger.warning("%s; skipping it", err)
            continue
        _check_identity(path, saved, args)
        if skipped:
            logger.warning("resuming from %s, the newest good checkpoint (damaged: %s)", os.path.basename(path),
                           ", ".join(os.path.basename(p) for p in skipped))
        return path
    if skipped:
        logger.warning("no good checkpoint in %s: starting from step 0", args.output_dir)
    return None


# Names that only this toolkit's atomic writers create: `atomic_dir` (.NAME.tmp-XXXX / .NAME.old-XXXX folders),
# `save_model` (.save-tmp-XXXX) and `atomic_open` (.NAME.XXXX.tmp files).
_ORPHAN = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-[\w]+|\.save-tmp-[\w]+|\..+\.tmp")


def sweep_orphans(output_dir: str) -> list[str]:
    """Remove what a killed process left in `output_dir` mid-write; returns what was removed.

    A checkpoint that was being replaced (renamed into `.NAME.old-XXXX/x` just before its successor took its
    place) is first put back when nothing took its place."""
    removed = []
    for entry in sorted(os.listdir(output_dir)) if os.path.isdir(output_dir) else []:
        m = _ORPHAN.fullmatch(entry)
        if not m:
            continue
        path = os.path.join(output_dir, entry)
        if m.group("kind") == "old":
            target = os.path.join(output_dir, m.group("name"))
            if not os.path.exists(target) and os.path.isdir(os.path.join(path, "x")):
                os.rename(os.path.join(path, "x"), target)
                logger.warning("restored %s from an interrupted replacement", target)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
        removed.append(entry)
    if removed:
        logger.info("removed %d temporary item(s) left by an interrupted run in %s", len(removed), output_dir)
    return removed
