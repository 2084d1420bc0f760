"""Decoding a JSON-lines file with a fine-tuned UniLM seq2seq model (what decode_seq2seq.py runs)."""
from __future__ import annotations

import glob
import logging
import math
import os
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from kdcore.cli import UserError
from kdcore.files import atomic_open, atomic_write_json, check_writable_file
from kdcore.modeling import check_length_fits, load_model, load_tokenizer

from .beam_search import CachedStepper, RecomputeStepper, SearchConfig, beam_search
from .seq2seq_data import check_special_tokens, decode_sources, detokenize, pad_stack, read_jsonl, to_ids
from .unilm import UniLMSeq2Seq
from kdcore.runtime import set_seed

logger = logging.getLogger("kd.decode")

HEAD_KEY_MARKERS = ("cls.predictions.", "lm_head.")


def check_has_lm_head(model_path: str, argname: str = "--model_path") -> None:
    """A fine-tuned seq2seq checkpoint has masked-LM head weights; a bare encoder (or a folder without weights)
    would decode garbage, so refuse it with a clear message."""
    folder = model_path if os.path.isdir(model_path) else None
    weights = os.path.join(folder, "model.safetensors") if folder else model_path
    if folder and not any(os.path.isfile(os.path.join(folder, n)) for n in ("model.safetensors", "pytorch_model.bin")):
        if not any(n.endswith(".index.json") for n in os.listdir(folder)):
            raise UserError(f"{argname} {model_path}: folder has no model.safetensors or pytorch_model.bin")
    if weights.endswith(".safetensors") and os.path.isfile(weights):
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(weights, framework="pt") as f:
                keys = list(f.keys())
        except (OSError, SafetensorError) as err:
            raise UserError(f"{argname} {model_path}: cannot read {weights} ({' '.join(str(err).split())})")
        if not any(any(m in k for m in HEAD_KEY_MARKERS) for k in keys):
            raise UserError(f"{argname} {model_path}: the weights have no masked-LM head; "
                            "is this a checkpoint written by run_seq2seq.py?")


def load_seq2seq_model(model_path: str, tokenizer, config_path: str | None = None) -> UniLMSeq2Seq:
    from transformers import AutoModelForMaskedLM

    check_special_tokens(tokenizer)
    check_has_lm_head(model_path)
    mlm = load_model(model_path, AutoModelForMaskedLM, config_name=config_path, argname="--model_path")
    if len(tokenizer) > mlm.config.vocab_size:
        raise UserError(f"--tokenizer_name: {len(tokenizer)} tokens but the model embeds only {mlm.config.vocab_size}")
    mlm.eval()
    return UniLMSeq2Seq(mlm, tokenizer.pad_token_id, tokenizer.mask_token_id, 0.0)


def forbid_ignore_ids(words: list[str] | None, tokenizer) -> tuple[int, ...]:
    """Token ids of --forbid_ignore_word entries (each may hold several words joined by '|', as in s2s-ft;
    bracketed names such as [x_sep] are upper-cased)."""
    ids = []
    for entry in words or []:
        for w in entry.split("|"):
            if not w:
                continue
            if w.startswith("[") and w.endswith("]"):
                w = w.upper()
            tid = tokenizer.convert_tokens_to_ids(w)
            if tid is None or (tid == tokenizer.unk_token_id and w != tokenizer.unk_token):
                raise UserError(f"--forbid_ignore_word {w!r} is not a token of the tokenizer")
            ids.append(tid)
    return tuple(sorted(set(ids)))


@dataclass
class DecodeStats:
    examples: int
    truncated_sources: int
    generated_tokens: int
    seconds: float


def decode_examples(model: UniLMSeq2Seq, tokenizer, source_ids: list[list[int]], cfg: SearchConfig,
                    max_source_tokens: int, batch_size: int, device, cached: bool = True,
                    progress: bool = True):
    """Decode every source; returns (token id lists, search results, stats), in input order."""
    sources, cut = decode_sources(source_ids, tokenizer, max_source_tokens)
    order = sorted(range(len(sources)), key=lambda i: -len(sources[i]))  # similar lengths share a batch
    results = [None] * len(sources)
    stepper_cls = CachedStepper if cached else RecomputeStepper
    stepper = stepper_cls(model)
    t0 = time.perf_counter()
    generated = 0
    with tqdm(total=len(order), disable=not progress, desc="decode", dynamic_ncols=True) as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = pad_stack([torch.tensor(sources[i]) for i in chunk], tokenizer.pad_token_id).to(device)
            lengths = torch.tensor([len(sources[i]) for i in chunk], device=device)
            for i, res in zip(chunk, beam_search(stepper, batch, lengths, cfg)):
                results[i] = res
                generated += len(res.tokens) + (1 if res.finished else 0)
            bar.update(len(chunk))
    if device.type == "cuda":
        torch.cuda.synchronize()
    stats = DecodeStats(len(sources), cut, generated, time.perf_counter() - t0)
    return results, stats


def output_line(tokens: list[int], tokenizer) -> str:
    """The prediction text: tokens up to the first [SEP]/pad, detokenised."""
    stop = {tokenizer.sep_token_id, tokenizer.pad_token_id}
    cut = []
    for t in tokens:
        if t in stop:
            break
        cut.append(t)
    return detokenize(cut, tokenizer)


def decode_file(model: UniLMSeq2Seq, tokenizer, input_file: str, output_file: str, cfg: SearchConfig,
                max_seq_length: int, max_tgt_length: int, batch_size: int, device, subset: int = 0,
                cached: bool = True) -> DecodeStats:
    examples = read_jsonl(input_file, require_target=False, argname="--input_file")
    if subset > 0:
        examples = examples[:subset]
    source_ids = to_ids([e["src"] for e in examples], tokenizer)
    max_source_tokens = max_seq_length - 2 - max_tgt_length
    results, stats = decode_examples(model, tokenizer, source_ids, cfg, max_source_tokens, batch_size, device, cached)
    if stats.truncated_sources:
        logger.warning("%d of %d sources were longer than --max_seq_length - 2 - --max_tgt_length = %d tokens and "
                       "were truncated", stats.truncated_sources, stats.examples, max_source_tokens)
    lines = [output_line(r.tokens, tokenizer) for r in results]
    with atomic_open(output_file) as f:
        for line in lines:
            f.write(line + "\n")
    if cfg.need_traces:
        atomic_write_json({
            "version": 1,
            "num_samples": len(results),
            "eos_id": cfg.eos_id,
            "traces": [{"pred_ids": r.tokens, "score": r.score if math.isfinite(r.score) else None, "finished": r.finished, "steps": r.trace}
                       for r in results],
        }, output_file + ".trace.json")
    return stats


def check_args(args) -> None:
    if args.mode != "s2s":
        raise UserError(f"--mode {args.mode}: only s2s decoding is supported")
    if args.pos_shift:
        raise UserError("--pos_shift (s2s-ft mask_way v0) is not supported; models from run_seq2seq.py use v2")
    if args.max_tgt_length < 1:
        raise UserError("--max_tgt_length must be >= 1")
    if args.max_tgt_length >= args.max_seq_length - 2:
        raise UserError(f"--max_tgt_length {args.max_tgt_length} must be below --max_seq_length - 2")
    if args.beam_size < 1 or args.batch_size < 1:
        raise UserError("--beam_size and --batch_size must be >= 1")
    if args.forbid_duplicate_ngrams and args.ngram_size < 1:
        raise UserError("--ngram_size must be >= 1")
    if args.min_len < 0:
        raise UserError("--min_len must be >= 0")


def run(args) -> None:
    """decode_seq2seq.py: decode --input_file with every checkpoint --model_path matches."""
    check_args(args)
    # An existing path is taken literally (a folder may be named "run[1]"); only otherwise is it a pattern.
    if os.path.exists(args.model_path):
        paths = [args.model_path]
    else:
        paths = sorted(glob.glob(args.model_path)) if glob.has_magic(args.model_path) else []
    if not paths:
        raise UserError(f"--model_path: no such file or folder: {args.model_path}")
    if len(paths) > 1 and args.output_file:
        raise UserError(f"--model_path {args.model_path} matches {len(paths)} checkpoints; drop --output_file "
                        "(each gets <checkpoint>.<split>)")
    if not args.output_file and not args.split:
        raise UserError("give --output_file, or --split to write <model_path>.<split>")
    outputs = [args.output_file or f"{os.path.normpath(path)}.{args.split}" for path in paths]
    for out in outputs:  # before hours of decoding, not after
        check_writable_file(out, "--output_file" if args.output_file else "--split")
        if args.need_score_traces:
            check_writable_file(out + ".trace.json", "--need_score_traces")
    read_jsonl(args.input_file, require_target=False, argname="--input_file")  # a bad line stops us before any model
    for path in paths:
        check_length_fits(args.config_path or path, args.max_seq_length, "--max_seq_length",
                          "--config_path" if args.config_path else "--model_path")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    set_seed(args.seed)
    tokenizer = load_tokenizer(args.tokenizer_name or paths[0], "--tokenizer_name",
                               do_lower_case=True if args.do_lower_case else None)
    cfg = SearchConfig(
        eos_id=tokenizer.sep_token_id, beam_size=args.beam_size, max_len=args.max_tgt_length, min_len=args.min_len,
        length_penalty=args.length_penalty, forbid_duplicate_ngrams=args.forbid_duplicate_ngrams,
        ngram_size=args.ngram_size, forbid_ignore_ids=forbid_ignore_ids(args.forbid_ignore_word, tokenizer),
        need_traces=args.need_score_traces,
    )
    for path, out in zip(paths, outputs):
        model = load_seq2seq_model(path, tokenizer, args.config_path)
        if args.max_seq_length > model.max_positions():
            raise UserError(f"--max_seq_length {args.max_seq_length} exceeds the model's {model.max_positions()} "
                            "position embeddings")
        if args.fp16:
            if device.type == "cuda":
                model.half()
            else:
                logger.warning("--fp16 ignored: decoding on CPU in float32")
        model.to(device)
        stats = decode_file(model, tokenizer, args.input_file, out, cfg, args.max_seq_length, args.max_tgt_length,
                            args.batch_size, device, subset=args.subset, cached=args.decoder == "cached")
        logger.info("%s: %d examples, %d tokens in %.1fs (%.1f tokens/s) -> %s", path, stats.examples,
                    stats.generated_tokens, stats.seconds, stats.generated_tokens / max(stats.seconds, 1e-9), out)
