"""Shared pieces of the MiniLM fine-tuning scripts (run_squad.py, run_xnli.py).

`--model_type` decides only how inputs are fed and which tokenizer family is expected; the architecture comes
from the config:

| model_type | architecture (config)   | tokenizer                      | token type ids |
|------------|-------------------------|--------------------------------|----------------|
| bert       | BERT                    | WordPiece (vocab.txt)          | yes            |
| minilm     | BERT (MiniLM release)   | XLM-R SentencePiece            | no             |
| roberta    | RoBERTa                 | byte-level BPE                 | no             |
| xlmr       | XLM-RoBERTa             | XLM-R SentencePiece            | no             |

`minilm` is the multilingual MiniLM: a BERT-architecture model that reads XLM-R's SentencePiece vocabulary and
was trained without segment embeddings, so no token type ids are passed (as in the MiniLM run_xnli.py).
"""
from __future__ import annotations

import glob
import logging
import os
import re

import torch
from torch import nn

from kdcore.batching import pad_batch
from kdcore.cli import UserError
from kdcore.modeling import check_vocab, load_model, load_tokenizer, save_model

logger = logging.getLogger("kd")

MODEL_TYPES = {
    # name: (passes token type ids, tokenizer family or None for "whatever the folder says")
    "bert": (True, None),
    "minilm": (False, "sentencepiece"),
    "roberta": (False, None),
    "xlmr": (False, "sentencepiece"),
}


def uses_token_type_ids(model_type: str) -> bool:
    return MODEL_TYPES[model_type][0]


def add_model_args(parser, model_type_default: str = "bert") -> None:
    """The model / tokenizer options of the seed commands."""
    g = parser.add_argument_group("model")
    g.add_argument("--model_type", default=model_type_default, choices=sorted(MODEL_TYPES),
                   help="bert: WordPiece + token type ids; minilm: BERT architecture + XLM-R SentencePiece "
                   "tokenizer, no token type ids; roberta / xlmr: their own architecture, no token type ids.")
    g.add_argument("--model_name_or_path", required=True,
                   help="An HF model folder, or a bare weights file (.bin / .safetensors) with --config_name.")
    g.add_argument("--config_name", default=None, help="Config JSON (needed with a bare weights file).")
    g.add_argument("--tokenizer_name", default=None,
                   help="Tokenizer folder, vocab.txt (WordPiece) or a SentencePiece .model file; "
                   "default: the model folder.")
    g.add_argument("--do_lower_case", action="store_true",
                   help="Lower-case the input (uncased WordPiece vocabularies, as in the seed command).")


def add_task_args(parser):
    """The seed commands' training / evaluation switches shared by run_squad.py and run_xnli.py."""
    g = parser.add_argument_group("task")
    g.add_argument("--do_train", action="store_true")
    g.add_argument("--do_eval", action="store_true")
    g.add_argument("--eval_all_checkpoints", action="store_true",
                   help="Evaluate every checkpoint-<step>/ in --output_dir as well as the final model.")
    g.add_argument("--per_gpu_train_batch_size", type=int, default=8, help="Training batch size per process.")
    g.add_argument("--per_gpu_eval_batch_size", type=int, default=8)
    g.add_argument("--num_train_epochs", type=float, default=3.0)
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
    family = MODEL_TYPES[args.model_type][1]
    if family == "sentencepiece" and "XLMRoberta" not in type(tokenizer).__name__:
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
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None:
        if getattr(config, "model_type", "") in ("roberta", "xlm-roberta"):
            limit -= 2  # positions start after the padding index
        if max_seq_length > limit:
            raise UserError(f"--max_seq_length {max_seq_length} is longer than the model's {limit} positions")


class TaskObjective(nn.Module):
    """Adapter from an HF task model to the runtime's objective: forward(**batch) -> {"loss": ...}."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, **batch):
        return {"loss": self.model(**batch).loss}


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


def train_task(rt, args, model: nn.Module, items: list[dict], tokenizer):
    """Fine-tune an HF task model on `items` (dicts of input_ids [, token_type_ids] and labels) with the shared
    runtime; checkpoints and the final model are HF folders with the tokenizer."""
    from kdcore.trainer import train

    result = train(
        rt, args, TaskObjective(model), ListDataset(items), lambda batch: pad_collate(batch, tokenizer.pad_token_id),
        args.per_gpu_train_batch_size, args.num_train_epochs,
        lambda objective, folder: save_model(objective.model, folder, tokenizer),
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
    """(name, folder) pairs: every `checkpoint-<step>/` holding a model (oldest first, when asked), then the
    final model in `output_dir` itself (if there is one)."""
    found = []
    if include_checkpoints:
        for path in glob.glob(os.path.join(output_dir, "checkpoint-*")):
            m = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(path))
            if m and os.path.isfile(os.path.join(path, "config.json")):
                found.append((int(m.group(1)), path))
    out = [(os.path.basename(p), p) for _, p in sorted(found)]
    if os.path.isfile(os.path.join(output_dir, "config.json")):
        out.append(("final", output_dir))
    return out
