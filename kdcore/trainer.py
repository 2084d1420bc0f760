"""The one training loop every script uses, as a small trainer with named steps.

    rt = Runtime(args)
    result = train(rt, args, objective, dataset, collate_fn, batch_size, num_train_epochs, save_model_fn)

`objective` is an nn.Module whose forward(**batch) returns a dict of scalar tensors: "loss" is back-propagated,
every other entry is logged. A distillation objective keeps its frozen teacher outside its module tree
(kdcore.objective), so nothing here needs to know about teachers.

    Trainer.run()
      plan()            examples -> micro-batches per epoch -> optimisation steps, warmup
      (resume)          kdcore.checkpoint.load_checkpoint, when --resume_from_checkpoint finds one
      for each micro-batch of each epoch:
        micro_step()    forward, loss / accumulation window, backward (no DDP sync inside the window)
        optimizer_step() unscale, clip, step, schedule, zero_grad         (once per accumulation window)
        log()           mean losses since the last record, lr, grad norm, tokens/s -> train_log.jsonl
        evaluate()      every eval_steps: evaluate_fn, keep the best model
        checkpoint()    every --save_steps: kdcore.checkpoint.save_checkpoint, prune to --save_total_limit

What the loop guarantees:
* the data order is a pure function of (seed, epoch), as in DistributedSampler, so a resumed run sees exactly the
  batches an uninterrupted run would, and a 2-process run sees the same global batches as a 1-process run;
  the data position is the number of samples consumed, so a run can also resume with another number of
  processes (the rest of the epoch is shared out again; rank 0 decides the checkpoint, kdcore.checkpoint);
* checkpoints hold everything needed to continue exactly (kdcore.checkpoint); on CPU a resumed run ends
  bit-identical to an uninterrupted one;
* every trainable module is inside the one DDP wrapper (the original TinyBERT wrapped only the teacher).
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import model_card
from .checkpoint import (TrainState, agree_on_resume, gather_rng, load_checkpoint, prune_checkpoints, run_identity,
                         save_checkpoint, sweep_orphans, unwrap)
from .errors import UserError
from .cli import ensure_writable_dir, note_resume_point
from .files import atomic_open, iter_text_lines
from .runtime import Runtime

logger = logging.getLogger("kd.trainer")


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
        groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon, fused=True
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
def length_grouped(order: list[int], lengths, group: int, generator: torch.Generator, window: int = 64) -> list[int]:
    """`order` rearranged so that every run of `group` consecutive samples (one global batch) has similar lengths.

    Windows of `window` groups of the shuffled order are each sorted by length and cut into groups, and the groups
    of the whole epoch are then shuffled, so batches stay random in which lengths come when but pad little. Line-by-
    line text (a mean of 23 tokens padded to the batch's longest, up to 128) runs several times faster this way.
    """
    span = group * window
    groups = []
    for start in range(0, len(order), span):
        chunk = sorted(order[start : start + span], key=lambda i: lengths[i])
        groups.extend(chunk[g : g + group] for g in range(0, len(chunk), group))
    # The last (possibly short) group stays last, so every earlier global batch is full and equal-sized.
    tail = groups.pop() if groups and len(groups[-1]) < group else None
    groups = [groups[i] for i in torch.randperm(len(groups), generator=generator).tolist()]
    return [i for g in groups + ([tail] if tail else []) for i in g]


def epoch_indices(num_examples: int, epoch: int, seed: int, rank: int, world_size: int, shuffle: bool = True,
                  consumed: int = 0, lengths=None, group: int = 1) -> list[int]:
    """This rank's examples of `epoch` once the first `consumed` samples of the epoch's global order are used.

    The global order P is a permutation seeded by seed + epoch (DistributedSampler's rule). The samples left,
    P[consumed:], are padded with P's first samples to a multiple of the world size, and rank r takes every
    world_size-th one from r on; with consumed = 0 that is DistributedSampler's split, rank r gets P[r::world_size].
    Since ranks take strided samples and consume equal-sized batches, after b batches of B per rank exactly the
    first b * B * world_size samples of P are used. So with the same world size a resumed rank continues exactly
    where it stopped, and with another world size the rest of the epoch is shared out again, nothing repeated or
    skipped (apart from the padding of the last round). With `lengths` (one per example), P is regrouped by
    `length_grouped` into runs of `group` (= batch size x world size) similar lengths, still a function of (seed,
    epoch) alone.
    """
    if shuffle:
        g = torch.Generator().manual_seed(seed + epoch)
        order = torch.randperm(num_examples, generator=g).tolist()
        if lengths is not None:
            order = length_grouped(order, lengths, group, g)
    else:
        order = list(range(num_examples))
    rest = order[consumed:]
    total = math.ceil(len(rest) / world_size) * world_size
    rest += order[: total - len(rest)]
    return rest[rank:total:world_size]


def parameters_no_loss_reaches(model: nn.Module, batch: dict, rt: Runtime) -> list[str]:
    """Names of the trainable parameters that one forward + backward of `batch` leaves without a gradient.

    Which parameters a loss reaches is a fact of the model's structure, not of the data: an XLM-R-XL student's last
    LayerNorms under MiniLM (its forward stops at the last Q/K/V), a DeBERTa-v2 student's pos_key_proj /
    pos_query_proj (share_att_key=False) or the rel_embeddings of a 1-layer one. AdamW never changes them (they
    get no gradient), but DDP would wait for their gradients forever ("Expected to have finished reduction"), so
    the trainer tells DDP to leave them out. Gradients are cleared and the RNG states restored afterwards, so the
    run is otherwise exactly what it would be without this probe.
    """
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if rt.device.type == "cuda" else None
    with rt.autocast():
        loss = model(**batch)["loss"]
    loss.backward()
    unreached = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    for p in model.parameters():
        p.grad = None
    torch.set_rng_state(cpu_rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    return unreached


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

    def log(self, record: dict) -> None:
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
        keep = []
        for lineno, line in iter_text_lines(self.path, "train_log.jsonl"):
            try:
                record = json.loads(line) if line.strip() else None
            except json.JSONDecodeError:  # a line torn by a kill mid-write
                logger.warning("%s:%d: dropping a damaged log line", self.path, lineno)
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                keep.append(line + "\n")
        with atomic_open(self.path) as f:
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


@dataclass
class Plan:
    """How many micro-batches and optimisation steps a run takes."""

    batch_size: int  # examples per micro-batch per process
    accumulation: int  # micro-batches per optimisation step
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    num_epochs: int
    warmup_steps: int


def plan(args, num_examples: int, world_size: int, batch_size: int, num_train_epochs: float) -> Plan:
    """--max_steps (when > 0) wins over the epoch count; --num_warmup_steps over --warmup_proportion."""
    if num_examples == 0:
        raise UserError("the training set is empty")
    accum = max(1, args.gradient_accumulation_steps)
    batches_per_epoch = math.ceil(math.ceil(num_examples / world_size) / batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / accum)
    if args.max_steps and args.max_steps > 0:
        total_steps = args.max_steps
    else:
        total_steps = max(1, math.ceil(steps_per_epoch * num_train_epochs))
    warmup = args.num_warmup_steps if args.num_warmup_steps is not None else int(args.warmup_proportion * total_steps)
    return Plan(batch_size, accum, batches_per_epoch, steps_per_epoch, total_steps,
                math.ceil(total_steps / steps_per_epoch), warmup)


class Trainer:
    """Trains `model` (an objective returning a dict of losses) and saves it; see the module docstring."""

    def __init__(self, rt: Runtime, args, model: nn.Module, train_dataset, collate_fn: Callable, batch_size: int,
                 num_train_epochs: float, save_model_fn: Callable[[nn.Module, str], None],
                 evaluate_fn: Callable[[nn.Module, int], dict] | None = None, eval_steps: int = 0,
                 metric_for_best: str | None = None,
                 checkpoint_prefix: str = "checkpoint", shuffle: bool = True, group_by_length: bool = False):
        ensure_writable_dir(args.output_dir)
        self.rt, self.args = rt, args
        self.dataset, self.collate_fn, self.shuffle = train_dataset, collate_fn, shuffle
        # group_by_length: the dataset's `lengths` (tokens per example) group each global batch (length_grouped)
        self.lengths = train_dataset.lengths if group_by_length else None
        self.save_model_fn, self.evaluate_fn, self.eval_steps = save_model_fn, evaluate_fn, eval_steps
        self.metric_for_best = metric_for_best  # higher is better (every task metric here is)
        self.prefix = checkpoint_prefix
        self.plan = plan(args, len(train_dataset), rt.world_size, batch_size, num_train_epochs)

        self.model = model.to(rt.device)
        self.model.train()
        self.optimizer = build_optimizer(self.model, args)
        self.scheduler = linear_schedule(self.optimizer, self.plan.warmup_steps, self.plan.total_steps,
                                         decay=getattr(args, "lr_schedule", "linear") == "linear")
        self.state = TrainState()
        if rt.is_main:
            sweep_orphans(args.output_dir)
        rt.barrier()
        resume = agree_on_resume(args, checkpoint_prefix, rt)  # rank 0 verifies and decides for every rank
        if resume:
            self.state = load_checkpoint(resume, rt, self.model, self.optimizer, self.scheduler, self.plan.batch_size)
            note_resume_point(self.state.global_step, resume)
            if rt.is_main:
                logger.info("resumed from %s (step %d)", resume, self.state.global_step)
        self._wrap_in_ddp = rt.distributed  # done on the first micro-batch (wrap_in_ddp)
        self.logger = JsonlLogger(args.output_dir, rt.is_main)
        if resume:
            self.logger.truncate_after(self.state.global_step)
        elif rt.is_main and os.path.isfile(self.logger.path):
            os.remove(self.logger.path)
        self._running: dict[str, float] = {}
        self._running_count, self._tokens, self._t0 = 0, 0, time.time()
        self.last_losses: dict = {}

    # -- the steps ---------------------------------------------------------------------------------------------------
    def epoch_loader(self, epoch: int) -> tuple[torch.utils.data.DataLoader, list[int]]:
        """This rank's micro-batches of `epoch` after the samples already consumed (the saved data position on
        resume), and their sizes."""
        order = epoch_indices(len(self.dataset), epoch, self.args.seed, self.rt.rank, self.rt.world_size, self.shuffle,
                              consumed=self.state.samples_in_epoch, lengths=self.lengths,
                              group=self.plan.batch_size * self.rt.world_size)
        size = self.plan.batch_size
        batches = [order[i : i + size] for i in range(0, len(order), size)]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=batches,
            collate_fn=self.collate_fn,
            num_workers=self.args.dataloader_num_workers,
            # A private generator: creating the iterator must not draw from the global RNG, or a resumed run
            # (which creates it mid-epoch) would see different dropout masks than an uninterrupted one.
            generator=torch.Generator(),
        )
        return loader, [len(b) for b in batches]

    def wrap_in_ddp(self, batch: dict) -> None:
        """Wrap the objective in DDP, leaving out the parameters no loss term reaches (found on the first batch)."""
        rt = self.rt
        unreached = parameters_no_loss_reaches(self.model, batch, rt)
        if unreached:
            if rt.is_main:
                logger.info("%d parameter tensor(s) get no gradient from any loss term; DDP leaves them out: %s",
                            len(unreached), ", ".join(unreached[:4]) + (", ..." if len(unreached) > 4 else ""))
            # the public switch (find_unused_parameters=True) would search the graph at every step instead
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, unreached)
        self.model = nn.parallel.DistributedDataParallel(
            self.model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None, broadcast_buffers=False
        )
        self._wrap_in_ddp = False

    def micro_step(self, batch: dict, window: int, is_step: bool) -> None:
        """Forward and backward of one micro-batch; the loss is divided by its accumulation window's length."""
        rt = self.rt
        batch = rt.batch_to_device(batch)
        if self._wrap_in_ddp:
            self.wrap_in_ddp(batch)
        sync = nullcontext() if (is_step or not rt.distributed) else self.model.no_sync()
        with sync:
            with rt.autocast():
                losses = self.model(**batch)
            loss = losses["loss"] / window
            if rt.scaler is not None:
                rt.scaler.scale(loss).backward()
            else:
                loss.backward()
        for k, v in losses.items():
            self._running[k] = self._running.get(k, 0.0) + float(v.detach())
        self._running_count += 1
        self._tokens += _count_tokens(batch)
        self.state.batch_in_epoch += 1

    def optimizer_step(self) -> float | None:
        """Unscale, clip to --max_grad_norm, step, advance the schedule; returns the gradient norm before clipping."""
        rt, args = self.rt, self.args
        if rt.scaler is not None:
            rt.scaler.unscale_(self.optimizer)
        grad_norm = None
        if args.max_grad_norm and args.max_grad_norm > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), args.max_grad_norm))
        if rt.scaler is not None:
            rt.scaler.step(self.optimizer)
            rt.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        note_resume_point(self.state.global_step)
        self.last_losses = {k: v / self._running_count for k, v in self._running.items()}
        model_card.note_training_progress(self.state.global_step, self.last_losses)  # for the cards of the folders saved next
        return grad_norm

    def log(self, grad_norm: float | None, progress) -> None:
        """One train_log.jsonl record: the mean of each loss term since the previous record, lr, tokens/s."""
        elapsed = max(time.time() - self._t0, 1e-9)
        record = {"step": self.state.global_step, "epoch": self.state.epoch, "lr": self.scheduler.get_last_lr()[0],
                  **self.last_losses, "tokens_per_s": self._tokens * self.rt.world_size / elapsed}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        self.logger.log(record)
        progress.set_postfix({k: f"{v:.4f}" for k, v in self.last_losses.items()})
        self._running, self._running_count, self._tokens, self._t0 = {}, 0, 0, time.time()

    def evaluate(self) -> None:
        """Run evaluate_fn on rank 0, log its metrics, and save the model when --metric_for_best improves."""
        if self.evaluate_fn is None:
            return
        rt, state = self.rt, self.state
        if rt.is_main:
            unwrapped = unwrap(self.model)
            unwrapped.eval()
            with torch.no_grad(), rt.autocast():
                metrics = self.evaluate_fn(unwrapped, state.global_step)
            unwrapped.train()
            record = {"step": state.global_step, **{f"eval_{k}": v for k, v in metrics.items()}}
            state.eval_history.append(record)
            model_card.note_evaluation(record)
            self.logger.log(record)
            if self.metric_for_best is not None:
                if self.metric_for_best not in metrics:
                    raise UserError(f"evaluation returned no {self.metric_for_best!r} (got {sorted(metrics)})")
                value = metrics[self.metric_for_best]
                if state.best_metric is None or value > state.best_metric:
                    state.best_metric = value
                    self.save_model_fn(unwrapped, self.args.output_dir)
                    logger.info("step %d: new best %s = %.4f, saved to %s", state.global_step, self.metric_for_best,
                                value, self.args.output_dir)
        rt.barrier()

    def checkpoint(self) -> None:
        """Save a checkpoint (every rank's RNG states gathered first) and prune old ones."""
        rng = gather_rng(self.rt)  # collective: every rank takes part
        if self.rt.is_main:
            path = os.path.join(self.args.output_dir, f"{self.prefix}-{self.state.global_step}")
            save_checkpoint(path, self.rt, self.model, self.optimizer, self.scheduler, self.state, self.save_model_fn, rng,
                            identity=run_identity(self.args))
            note_resume_point(checkpoint=path)
            prune_checkpoints(self.args.output_dir, self.prefix, self.args.save_total_limit)
        self.rt.barrier()

    # -- the loop ----------------------------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        rt, args, p, state = self.rt, self.args, self.plan, self.state
        if rt.is_main:
            logger.info("examples %d, batch %d x %d processes x %d accumulation, %d steps (%d warmup)",
                        len(self.dataset), p.batch_size, rt.world_size, p.accumulation, p.total_steps, p.warmup_steps)
        progress = tqdm(total=p.total_steps, initial=state.global_step, disable=not rt.is_main, desc="train",
                        dynamic_ncols=True)
        done = state.global_step >= p.total_steps
        while not done and state.epoch < p.num_epochs:
            loader, sizes = self.epoch_loader(state.epoch)
            state.batch_in_epoch = 0  # counts this order's micro-batches; a resume starts a new order
            for batch in loader:
                # Checkpoints are taken at step ends, so windows start at the beginning of the (remaining) order.
                micro = state.batch_in_epoch % p.accumulation  # position inside the accumulation window
                window = min(p.accumulation, len(sizes) - (state.batch_in_epoch - micro))  # last one may be short
                is_step = micro == window - 1
                state.samples_in_epoch += sizes[state.batch_in_epoch] * rt.world_size
                self.micro_step(batch, window, is_step)
                if not is_step:
                    continue
                grad_norm = self.optimizer_step()
                progress.update(1)
                if state.global_step % max(1, args.logging_steps) == 0 or state.global_step == p.total_steps:
                    self.log(grad_norm, progress)
                if self.eval_steps and state.global_step % self.eval_steps == 0:
                    self.evaluate()
                if args.save_steps and state.global_step % args.save_steps == 0 and state.global_step < p.total_steps:
                    self.checkpoint()
                if state.global_step >= p.total_steps:
                    done = True
                    break
            if not done:
                state.epoch += 1
                state.batch_in_epoch = state.samples_in_epoch = 0
        progress.close()

        if self.evaluate_fn is not None and not (self.eval_steps and state.global_step % self.eval_steps == 0):
            self.evaluate()
        if args.save_steps:
            self.checkpoint()  # a final checkpoint so --eval_all_checkpoints sees the last step too
        if rt.is_main and (self.metric_for_best is None or self.evaluate_fn is None):
            self.save_model_fn(unwrap(self.model), args.output_dir)
        rt.barrier()
        self.logger.close()
        return TrainResult(state.global_step, self.last_losses, state.best_metric, state.eval_history)


def train(rt: Runtime, args, model: nn.Module, train_dataset, collate_fn: Callable, batch_size: int,
          num_train_epochs: float, save_model_fn: Callable[[nn.Module, str], None], **options) -> TrainResult:
    """`Trainer(...).run()`; `options`: evaluate_fn, eval_steps, metric_for_best, checkpoint_prefix, shuffle,
    group_by_length (see Trainer)."""
    return Trainer(rt, args, model, train_dataset, collate_fn, batch_size, num_train_epochs, save_model_fn,
                   **options).run()
