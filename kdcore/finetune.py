"""Fine-tuning an HF task model: the one driver of GLUE (`run_glue.py`), SQuAD (`run_squad.py`) and XNLI
(`run_xnli.py`), and of the evaluation of every checkpoint.

A task supplies a reader (files -> examples), an encoder (examples -> items: dicts of input_ids
[, token_type_ids] and labels) and a metric; this module supplies the rest:

    add_model_args / load_task_tokenizer / load_task_model   the seed scripts' model options, checked
    train_task(rt, args, model, items, collate, tokenizer)   TaskObjective on the shared Trainer; HF folders out
    models_to_evaluate(args)                                 checkpoints (kdcore.checkpoint.list_checkpoints) + final
    predict_batches(model, items, collate, batch_size, ...)  the one batched prediction loop

`--model_type` decides only how inputs are fed and which tokenizer family is expected (kdcore/families.py
MODEL_TYPES); the architecture comes from the config. `minilm` is the multilingual MiniLM: a BERT-architecture
model that reads XLM-R's SentencePiece vocabulary and was trained without segment embeddings, so no token type ids
are passed (as in the MiniLM run_xnli.py).
"""
from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .batching import pad_batch
from .checkpoint import list_checkpoints
from .errors import UserError
from .families import MODEL_TYPES, add_model_type_arg, max_input_positions
from .modeling import check_vocab, load_model, load_tokenizer, save_model
from .trainer import train

logger = logging.getLogger("kd")


def add_model_args(parser, model_type_default: str = "bert") -> None:
    """The model / tokenizer options of the seed commands."""
    g = parser.add_argument_group("model")
    add_model_type_arg(g, model_type_default)
    g.add_argument("--model_name_or_path", required=True,
                   help="An HF model folder, or a bare weights file (.bin / .safetensors) with --config_name.",
                   identifies=True)
    g.add_argument("--config_name", default=None, help="Config JSON (needed with a bare weights file).",
                   identifies=True)
    g.add_argument("--tokenizer_name", default=None,
                   help="Tokenizer folder, vocab.txt (WordPiece) or a SentencePiece .model file; "
                   "default: the model folder.", identifies=True)
    g.add_argument("--do_lower_case", action="store_true",
                   help="Lower-case the input (uncased WordPiece vocabularies, as in the seed command).",
                   identifies=True)


def add_task_args(parser):
    """The seed commands' training / evaluation switches shared by run_squad.py and run_xnli.py."""
    g = parser.add_argument_group("task")
    g.add_argument("--do_train", action="store_true", identifies=False)
    g.add_argument("--do_eval", action="store_true", identifies=False)
    g.add_argument("--eval_all_checkpoints", action="store_true",
                   help="Evaluate every checkpoint-<step>/ in --output_dir as well as the final model.",
                   identifies=False)
    g.add_argument("--per_gpu_train_batch_size", type=int, default=8, help="Training batch size per process.",
                   identifies=True, range=">=1")
    g.add_argument("--per_gpu_eval_batch_size", type=int, default=8, identifies=False, range=">=1")
    g.add_argument("--num_train_epochs", type=float, default=3.0, identifies=True, range=">0")
    return g


def load_task_tokenizer(args):
    """The tokenizer named by --tokenizer_name (default: the model folder), checked against --model_type."""
    path = args.tokenizer_name or args.model_name_or_path
    if args.tokenizer_name is None and not os.path.isdir(path):
        raise UserError(f"--model_name_or_path {path} is a weights file: give --tokenizer_name too")
    if not os.path.exists(path):
        raise UserError(
            f"--tokenizer_name {path}: no such file or folder (this toolkit runs offline: give a tokenizer "
            "folder, a vocab.txt, or a SentencePiece .model file)"
        )
    if os.path.isfile(path):
        tokenizer = load_tokenizer(path, "--tokenizer_name", do_lower_case=bool(args.do_lower_case))
    else:
        tokenizer = load_tokenizer(path, "--tokenizer_name", do_lower_case=True if args.do_lower_case else None)
    if not getattr(tokenizer, "is_fast", True):
        raise UserError(f"--tokenizer_name {path}: a fast tokenizer is needed (character offsets)")
    if MODEL_TYPES[args.model_type].sentencepiece_tokenizer and "XLMRoberta" not in type(tokenizer).__name__:
        raise UserError(
            f"--model_type {args.model_type} reads XLM-R's SentencePiece vocabulary, but --tokenizer_name {path} "
            f"gives a {type(tokenizer).__name__}; pass the XLM-R tokenizer folder or its sentencepiece.bpe.model"
        )
    return tokenizer


def load_task_model(args, model_class, tokenizer, path: str | None = None, **config_overrides):
    """The task model (e.g. AutoModelForQuestionAnswering) from --model_name_or_path (+ --config_name)."""
    path = path or args.model_name_or_path
    config_name = args.config_name if path == args.model_name_or_path else None
    model = load_model(path, model_class=model_class, config_name=config_name, argname="--model_name_or_path",
                       **config_overrides)
    check_vocab(model.config, tokenizer, None, "--model_name_or_path")
    return model


def check_max_seq_length(config, max_seq_length: int) -> None:
    """UserError when windows would be longer than the model's position embeddings."""
    limit = max_input_positions(config)
    if limit is not None:
        if max_seq_length > limit:
            raise UserError(f"--max_seq_length {max_seq_length} is longer than the model's {limit} positions")


class TaskObjective(nn.Module):
    """An HF task model as the trainer's objective: forward(**batch) -> {"loss": ...}. The loss is the model's own
    (from `labels`), or `loss_fn(logits, labels)` when given (GLUE's CE / MSE in fp32)."""

    def __init__(self, model: nn.Module, loss_fn: Callable | None = None):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, **batch):
        if self.loss_fn is None:
            return {"loss": self.model(**batch).loss}
        labels = batch.pop("labels")
        return {"loss": self.loss_fn(self.model(**batch).logits, labels)}


def pad_collate(items: list[dict], pad_token_id: int) -> dict:
    """Pad `input_ids` (and `token_type_ids`) to the longest item; other keys are stacked scalars."""
    has_types = "token_type_ids" in items[0]
    batch = pad_batch([it["input_ids"] for it in items],
                      [it["token_type_ids"] for it in items] if has_types else None, pad_token_id)
    for key in items[0]:
        if key not in ("input_ids", "token_type_ids"):
            batch[key] = torch.as_tensor([it[key] for it in items])
    return batch


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def train_task(rt, args, model: nn.Module, items, tokenizer, collate_fn: Callable | None = None,
               batch_size: int | None = None, loss_fn: Callable | None = None, **trainer_options):
    """Fine-tune an HF task model on `items` (a list of dicts of input_ids [, token_type_ids] and labels, or any
    dataset with its `collate_fn`) with the shared Trainer; checkpoints and the final model are HF folders with
    the tokenizer. `trainer_options`: evaluate_fn, eval_steps, metric_for_best (see kdcore.trainer.Trainer)."""
    dataset = ListDataset(items) if isinstance(items, list) else items
    collate_fn = collate_fn or (lambda batch: pad_collate(batch, tokenizer.pad_token_id))
    result = train(
        rt, args, TaskObjective(model, loss_fn), dataset, collate_fn,
        batch_size or args.per_gpu_train_batch_size, args.num_train_epochs,
        lambda objective, folder: save_model(objective.model, folder, tokenizer), **trainer_options,
    )
    logger.info("trained %d steps, last losses %s", result.global_step, result.last_losses)
    return result


def models_to_evaluate(args) -> list[tuple[str, str | None]]:
    """(name, folder) pairs to evaluate: after training (or with --eval_all_checkpoints) the folders in
    --output_dir; otherwise the model given (folder None = the model already loaded)."""
    if args.do_train or args.eval_all_checkpoints:
        targets = checkpoints_to_evaluate(args.output_dir, args.eval_all_checkpoints)
        if targets or args.do_train:
            return targets
    return [("model", None)]


def checkpoints_to_evaluate(output_dir: str, include_checkpoints: bool) -> list[tuple[str, str]]:
    """(name, folder) pairs: every complete `checkpoint-<step>/` (oldest first, when asked), then the final model
    in `output_dir` itself (if there is one)."""
    out = [(os.path.basename(p), p) for p in list_checkpoints(output_dir)] if include_checkpoints else []
    if os.path.isfile(os.path.join(output_dir, "config.json")):
        out.append(("final", output_dir))
    return out


@torch.no_grad()
def predict_batches(model: nn.Module, items, collate_fn: Callable, batch_size: int, device, step: Callable,
                    autocast: Callable | None = None, desc: str = "evaluating") -> list:
    """[step(model, batch) for each batch of consecutive items], in item order.

    The one batched prediction loop: `items` is anything with len() and [i]; each batch is `collate_fn` of its
    items, moved to `device`; the model runs in eval mode (its mode is restored after), without gradients, under
    `autocast()` when given. `step` does the forward and returns what the caller keeps (logits, losses...).
    """
    was_training = model.training
    model.eval()
    out = []
    for start in tqdm(range(0, len(items), batch_size), desc=desc, dynamic_ncols=True, leave=False,
                      disable=len(items) < 10 * batch_size):
        batch = collate_fn([items[i] for i in range(start, min(len(items), start + batch_size))])
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast() if autocast is not None else nullcontext():
            out.append(step(model, batch))
    model.train(was_training)
    return out
