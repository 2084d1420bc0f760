"""SQuAD 1.1 / 2.0 (and MLQA) for extractive QA fine-tuning: reading, sliding-window features, post-processing.

Reading: the official SQuAD JSON ({"version", "data": [{"paragraphs": [{"context", "qas": [...]}]}]}). Anything
else is a UserError naming the file and the place. A training answer whose text is not found at its
`answer_start` in the context is counted and skipped with a warning (as the official tooling does).

Features: each question is paired with windows of its context. A window holds at most
`max_seq_length - len(question) - special tokens` context tokens and windows start every `doc_stride` context
tokens (the original BERT/HF rule), implemented with the fast tokenizer's overflow (overlap = window - stride).
The question is cut to `max_query_length` tokens. Character offsets from the fast tokenizer map tokens back to
the context, so answers are exact substrings of the original text (no de-tokenisation heuristics).

Post-processing (as the original `compute_predictions_logits`): per question, the `n_best_size` best start and end
logits of every window form candidate spans (start <= end, at most `max_answer_length` tokens); candidates are
ranked by start + end logit and de-duplicated by text. Unlike the original, the n best starts are taken among
context tokens whose window is their "max context" and the n best ends among context tokens (the original took
the n best of all positions and then dropped invalid ones, so it could end with no span and answer "empty");
if still no pair is valid, the best valid span of any window is searched exhaustively.
For SQuAD 2.0 the null score is the smallest CLS start + end logit over the windows, and

    null_odds = null score - (start + end logit of the best non-null span),

the answer being "" when null_odds > --null_score_diff_threshold.
"""
from __future__ import annotations

import collections
import json
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from kdcore import model_card
from kdcore.cli import UserError, ensure_writable_dir
from kdcore.files import atomic_write_json, read_json_file
from kdcore.finetune import (
    check_max_seq_length, load_task_model, load_task_tokenizer, models_to_evaluate, pad_collate, predict_batches,
    train_task,
)
from .squad_metrics import MLQA_LANGUAGES, evaluate_v1, squad_v2_report
from kdcore.modeling import check_length_fits
from kdcore.runtime import Runtime
from kdcore.families import MODEL_TYPES

logger = logging.getLogger("kd")


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SquadExample:
    qas_id: str
    question: str
    context: str
    answers: list = field(default_factory=list)  # [{"text", "answer_start"}]; empty when unanswerable
    is_impossible: bool = False


def read_squad_file(path: str, argname: str) -> dict:
    """Load and validate a SQuAD-format JSON file; returns the parsed JSON (with its `data` list)."""
    obj = read_json_file(path, argname, "SQuAD JSON file")
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise UserError(f"{argname} {path}: not a SQuAD JSON file (expected an object with a 'data' list)")
    ids = set()
    for a, article in enumerate(obj["data"]):
        where = f"{argname} {path}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise UserError(f"{where}: not a SQuAD article (expected an object with a 'paragraphs' list)")
        for p, par in enumerate(article["paragraphs"]):
            if not isinstance(par, dict) or not isinstance(par.get("context"), str) or not isinstance(par.get("qas"), list):
                raise UserError(f"{where}.paragraphs[{p}]: expected an object with a 'context' string and a 'qas' list")
            for q, qa in enumerate(par["qas"]):
                qwhere = f"{where}.paragraphs[{p}].qas[{q}]"
                if not isinstance(qa, dict) or not isinstance(qa.get("id"), str) or not isinstance(qa.get("question"), str):
                    raise UserError(f"{qwhere}: expected an object with string 'id' and 'question'")
                if qa["id"] in ids:
                    raise UserError(f"{qwhere}: duplicate question id {qa['id']!r}")
                ids.add(qa["id"])
                answers = qa.setdefault("answers", [])
                if not isinstance(answers, list) or any(
                    not isinstance(x, dict) or not isinstance(x.get("text"), str)
                    or not isinstance(x.get("answer_start"), int) for x in answers
                ):
                    raise UserError(f"{qwhere} (id {qa['id']}): 'answers' must be a list of "
                                    "{'text': str, 'answer_start': int}")
    if not ids:
        raise UserError(f"{argname} {path}: the file holds no questions")
    return obj


def examples_from_squad(data: list, max_examples: int | None = None) -> list[SquadExample]:
    examples = []
    for article in data:
        for par in article["paragraphs"]:
            for qa in par["qas"]:
                if max_examples is not None and len(examples) >= max_examples:
                    return examples
                examples.append(SquadExample(
                    qas_id=qa["id"], question=qa["question"], context=par["context"],
                    answers=list(qa.get("answers", [])), is_impossible=bool(qa.get("is_impossible", False)),
                ))
    return examples


def restrict_dataset(data: list, qids: set) -> list:
    """The `data` list keeping only questions whose id is in `qids` (for evaluating a slice)."""
    out = []
    for article in data:
        pars = []
        for par in article["paragraphs"]:
            qas = [qa for qa in par["qas"] if qa["id"] in qids]
            if qas:
                pars.append({**par, "qas": qas})
        if pars:
            out.append({**article, "paragraphs": pars})
    return out


def training_answer_span(example: SquadExample) -> tuple[int, int] | None:
    """(start_char, end_char) of the first answer, or None when the answer text is not at `answer_start`.

    Surrounding whitespace of the answer text is dropped (the span moves accordingly)."""
    ans = example.answers[0]
    text, start = ans["text"], ans["answer_start"]
    if start < 0 or example.context[start : start + len(text)] != text:
        return None
    stripped = text.strip()
    if not stripped:
        return None
    start += len(text) - len(text.lstrip())
    return start, start + len(stripped)


# ----------------------------------------------------------------------------------------------------------------
# Features
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SquadFeatures:
    """One entry per window (columnar)."""

    input_ids: list = field(default_factory=list)
    token_type_ids: list | None = None
    example_index: list = field(default_factory=list)
    cls_index: list = field(default_factory=list)
    offsets: list = field(default_factory=list)  # per token: (start, end) char span in the context, or None
    max_context: list = field(default_factory=list)  # per token: True when this window is its best context
    start_positions: list = field(default_factory=list)
    end_positions: list = field(default_factory=list)
    skipped: int = 0  # training examples skipped (answer not found in the context)

    def __len__(self):
        return len(self.input_ids)

    def items(self, is_training: bool) -> list[dict]:
        out = []
        for i in range(len(self.input_ids)):
            item = {"input_ids": self.input_ids[i]}
            if self.token_type_ids is not None:
                item["token_type_ids"] = self.token_type_ids[i]
            if is_training:
                item["start_positions"] = self.start_positions[i]
                item["end_positions"] = self.end_positions[i]
            else:
                item["feature_index"] = i
            out.append(item)
        return out


def _truncate_questions(tokenizer, questions: list[str], max_query_length: int) -> tuple[list[str], list[int]]:
    """Cut each question to at most `max_query_length` tokens (at a token's end offset); returns texts, lengths."""
    texts = [q.lstrip() for q in questions]
    lengths = [0] * len(texts)
    todo = list(range(len(texts)))
    for _ in range(5):  # re-tokenising a cut text can (rarely, with SentencePiece) change the count
        if not todo:
            break
        enc = tokenizer([texts[i] for i in todo], add_special_tokens=False, return_offsets_mapping=True)
        again = []
        for j, i in enumerate(todo):
            n = len(enc["input_ids"][j])
            if n > max_query_length:
                texts[i] = texts[i][: enc["offset_mapping"][j][max_query_length - 1][1]]
                again.append(i)
            else:
                lengths[i] = n
        todo = again
    if todo:
        raise UserError(f"cannot cut question {questions[todo[0]]!r} to --max_query_length {max_query_length}")
    return texts, lengths


def _max_context_flags(windows: list[tuple[int, int]]) -> list[list[bool]]:
    """For windows (start, length) over one context's tokens: is each window the token's best context?

    Score of token p in window (s, n): min(p - s, s + n - 1 - p) + 0.01 n (the original `_check_is_max_context`);
    ties go to the earlier window.
    """
    best = {}
    for w, (s, n) in enumerate(windows):
        for p in range(s, s + n):
            score = min(p - s, s + n - 1 - p) + 0.01 * n
            if p not in best or score > best[p][0]:
                best[p] = (score, w)
    return [[best[p][1] == w for p in range(s, s + n)] for w, (s, n) in enumerate(windows)]


def convert_examples_to_features(
    examples: list[SquadExample],
    tokenizer,
    max_seq_length: int,
    doc_stride: int,
    max_query_length: int,
    is_training: bool,
    use_token_type_ids: bool,
    batch_size: int = 256,
) -> SquadFeatures:
    """Sliding-window features (see the module docstring). Training examples whose answer is not found at its
    `answer_start` are counted in `skipped` and left out, with a warning."""
    num_special = tokenizer.num_special_tokens_to_add(pair=True)
    if doc_stride < 1:
        raise UserError(f"--doc_stride must be >= 1, got {doc_stride}")
    if max_query_length < 1:
        raise UserError(f"--max_query_length must be >= 1, got {max_query_length}")
    if max_seq_length - max_query_length - num_special < 1:
        raise UserError(
            f"--max_seq_length {max_seq_length} leaves no room for the context after a question of up to "
            f"--max_query_length {max_query_length} tokens and {num_special} special tokens"
        )
    feats = SquadFeatures(token_type_ids=[] if use_token_type_ids else None)
    spans: dict[int, tuple[int, int] | None] = {}
    keep = []
    bad_ids = []
    for i, ex in enumerate(examples):
        if is_training and not ex.is_impossible:
            if not ex.answers:
                bad_ids.append(ex.qas_id)
                continue
            span = training_answer_span(ex)
            if span is None:
                bad_ids.append(ex.qas_id)
                continue
            spans[i] = span
        keep.append(i)
    if bad_ids:
        feats.skipped = len(bad_ids)
        logger.warning("skipped %d of %d training questions whose answer text is not at its answer_start "
                       "(first: %s)", len(bad_ids), len(examples), ", ".join(bad_ids[:5]))
    if is_training and not keep:
        raise UserError("no training question has an answer that can be found in its context")

    q_texts, q_lens = _truncate_questions(tokenizer, [examples[i].question for i in keep], max_query_length)
    # Group by the overlap that gives this question's windows a start every doc_stride tokens.
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for j, i in enumerate(keep):
        avail = max_seq_length - q_lens[j] - num_special
        groups[max(0, avail - doc_stride)].append(j)

    per_example: dict[int, list[dict]] = {}
    progress = tqdm(total=len(keep), desc="features", disable=len(keep) < 2000, dynamic_ncols=True)
    for overlap, members in groups.items():
        for b in range(0, len(members), batch_size):
            chunk = members[b : b + batch_size]
            enc = tokenizer(
                [q_texts[j] for j in chunk],
                [examples[keep[j]].context for j in chunk],
                truncation="only_second",
                max_length=max_seq_length,
                stride=overlap,
                return_overflowing_tokens=True,
                return_offsets_mapping=True,
                return_token_type_ids=use_token_type_ids,
            )
            for w, sample in enumerate(enc["overflow_to_sample_mapping"]):
                seq_ids = enc.sequence_ids(w)
                per_example.setdefault(keep[chunk[sample]], []).append({
                    "input_ids": enc["input_ids"][w],
                    "token_type_ids": enc["token_type_ids"][w] if use_token_type_ids else None,
                    "offsets": [o if s == 1 else None for o, s in zip(enc["offset_mapping"][w], seq_ids)],
                    "overlap": overlap,
                })
            progress.update(len(chunk))
    progress.close()

    for ex_index in sorted(per_example):
        windows = per_example[ex_index]
        # Position of each window's context tokens in the whole context: window k starts where window k-1 did
        # plus its length minus the overlap (the tokenizer's overflow rule).
        starts, s = [], 0
        for k, win in enumerate(windows):
            n = sum(o is not None for o in win["offsets"])
            if k > 0:
                prev_n = sum(o is not None for o in windows[k - 1]["offsets"])
                s += prev_n - win["overlap"]
            starts.append((s, n))
        flags = _max_context_flags(starts)
        ex = examples[ex_index]
        for win, win_flags in zip(windows, flags):
            ids = win["input_ids"]
            cls = ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in ids else 0
            offsets = win["offsets"]
            ctx_positions = [t for t, o in enumerate(offsets) if o is not None]
            max_ctx = [False] * len(ids)
            for t, flag in zip(ctx_positions, win_flags):
                max_ctx[t] = flag
            if is_training:
                start_pos = end_pos = cls
                if not ex.is_impossible and ctx_positions:
                    a_start, a_end = spans[ex_index]
                    first, last = ctx_positions[0], ctx_positions[-1]
                    if offsets[first][0] <= a_start and offsets[last][1] >= a_end:
                        t = first
                        while t <= last and offsets[t][0] <= a_start:
                            t += 1
                        start_pos = t - 1
                        t = last
                        while t >= first and offsets[t][1] >= a_end:
                            t -= 1
                        end_pos = t + 1
                feats.start_positions.append(start_pos)
                feats.end_positions.append(end_pos)
            feats.input_ids.append(ids)
            if use_token_type_ids:
                feats.token_type_ids.append(win["token_type_ids"])
            feats.example_index.append(ex_index)
            feats.cls_index.append(cls)
            if not is_training:
                feats.offsets.append(offsets)
                feats.max_context.append(max_ctx)
    return feats


# ----------------------------------------------------------------------------------------------------------------
# Inference and post-processing
# ----------------------------------------------------------------------------------------------------------------
def predict_logits(model, features: SquadFeatures, collate_fn, batch_size: int, device, autocast) -> tuple[list, list]:
    """Start / end logits of every feature (trimmed to the feature's length), in feature order."""
    def step(model, batch):
        index = batch.pop("feature_index").tolist()
        out = model(**batch)
        return index, out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()

    items = features.items(is_training=False)
    starts, ends = [None] * len(items), [None] * len(items)
    for index, s, e in predict_batches(model, items, collate_fn, batch_size, device, step, autocast):
        for row, fi in enumerate(index):
            n = len(features.input_ids[fi])
            starts[fi], ends[fi] = s[row, :n], e[row, :n]
    return starts, ends


def _best_indexes(logits: np.ndarray, allowed: np.ndarray, n_best_size: int) -> list[int]:
    """The `n_best_size` highest-scoring allowed positions."""
    positions = np.flatnonzero(allowed)
    order = np.argsort(-logits[positions], kind="stable")
    return positions[order[:n_best_size]].tolist()


def _best_span(s_log: np.ndarray, e_log: np.ndarray, starts_ok: np.ndarray, ends_ok: np.ndarray,
               max_answer_length: int):
    """Exhaustive best (start, end) with both allowed, start <= end < start + max_answer_length; or None."""
    best = None
    for s in np.flatnonzero(starts_ok):
        window = np.flatnonzero(ends_ok[s : s + max_answer_length]) + s
        if window.size:
            e = int(window[np.argmax(e_log[window])])
            score = float(s_log[s] + e_log[e])
            if best is None or score > best[0]:
                best = (score, int(s), e)
    return best


def _softmax(scores: list[float]) -> list[float]:
    if not scores:
        return []
    m = max(scores)
    exps = [math.exp(s - m) for s in scores]
    total = sum(exps)
    return [x / total for x in exps]


@dataclass
class SquadPredictions:
    predictions: dict  # qid -> answer text ("" = no answer, SQuAD 2.0)
    nbest: dict  # qid -> [{"text", "probability", "start_logit", "end_logit"}]
    null_odds: dict | None  # qid -> null score - best non-null score (SQuAD 2.0)
    best_non_null: dict  # qid -> best non-empty answer text (what the threshold search scores)


def postprocess_predictions(
    examples: list[SquadExample],
    features: SquadFeatures,
    start_logits: list,
    end_logits: list,
    n_best_size: int,
    max_answer_length: int,
    version_2_with_negative: bool,
    null_score_diff_threshold: float,
) -> SquadPredictions:
    """Answers from logits (see the module docstring)."""
    by_example = collections.defaultdict(list)
    for fi, ex_index in enumerate(features.example_index):
        by_example[ex_index].append(fi)
    predictions, nbest_json, null_odds, best_non_null = {}, {}, {}, {}
    for ex_index, ex in enumerate(examples):
        prelim, fallback = [], {}
        score_null, null_start, null_end = None, 0.0, 0.0
        for fi in by_example.get(ex_index, []):
            s_log, e_log = start_logits[fi], end_logits[fi]
            offsets, max_ctx = features.offsets[fi], features.max_context[fi]
            if version_2_with_negative:
                cls = features.cls_index[fi]
                feature_null = float(s_log[cls] + e_log[cls])
                if score_null is None or feature_null < score_null:
                    score_null, null_start, null_end = feature_null, float(s_log[cls]), float(e_log[cls])
            in_context = np.array([o is not None for o in offsets])
            starts_ok = in_context & np.asarray(max_ctx, dtype=bool)
            feature_spans = []
            for s in _best_indexes(s_log, starts_ok, n_best_size):
                for e in _best_indexes(e_log, in_context, n_best_size):
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    feature_spans.append((s, e))
            fallback[fi] = (starts_ok, in_context)
            for s, e in feature_spans:
                prelim.append((float(s_log[s] + e_log[e]), float(s_log[s]), float(e_log[e]),
                               offsets[s][0], offsets[e][1]))
        if not prelim:
            # No pair among the n-best starts and ends is a valid span: take the best valid span of any window.
            for fi, (starts_ok, in_context) in fallback.items():
                span = _best_span(start_logits[fi], end_logits[fi], starts_ok, in_context, max_answer_length)
                if span is not None:
                    _, s, e = span
                    prelim.append((span[0], float(start_logits[fi][s]), float(end_logits[fi][e]),
                                   features.offsets[fi][s][0], features.offsets[fi][e][1]))
        prelim.sort(key=lambda x: x[0], reverse=True)
        nbest, seen = [], set()
        for _, s_logit, e_logit, c_start, c_end in prelim:
            if len(nbest) >= n_best_size:
                break
            text = ex.context[c_start:c_end]
            if text in seen:
                continue
            seen.add(text)
            nbest.append({"text": text, "start_logit": s_logit, "end_logit": e_logit})
        non_null = nbest[0] if nbest else None
        if version_2_with_negative and score_null is not None:
            # The null answer is always listed, at its rank (as in the original).
            nbest.append({"text": "", "start_logit": null_start, "end_logit": null_end})
            nbest.sort(key=lambda x: x["start_logit"] + x["end_logit"], reverse=True)
        probs = _softmax([x["start_logit"] + x["end_logit"] for x in nbest])
        nbest_json[ex.qas_id] = [{"text": x["text"], "probability": p, "start_logit": x["start_logit"],
                                  "end_logit": x["end_logit"]} for x, p in zip(nbest, probs)]
        best_text = non_null["text"] if non_null is not None else ""
        best_non_null[ex.qas_id] = best_text
        if version_2_with_negative:
            non_null_score = non_null["start_logit"] + non_null["end_logit"] if non_null is not None else 0.0
            diff = (score_null if score_null is not None else 0.0) - non_null_score
            if non_null is None:  # no valid span in any window: the answer can only be "no answer"
                diff = max(diff, null_score_diff_threshold) + 1.0
            null_odds[ex.qas_id] = diff
            predictions[ex.qas_id] = "" if diff > null_score_diff_threshold else best_text
        else:
            predictions[ex.qas_id] = best_text
    return SquadPredictions(predictions, nbest_json, null_odds if version_2_with_negative else None, best_non_null)


# ----------------------------------------------------------------------------------------------------------------
# The run_squad.py workflow
# ----------------------------------------------------------------------------------------------------------------
def _data_path(args, name: str) -> str:
    path = getattr(args, name)
    if path is None:
        raise UserError(f"--{name} is required with --{'do_train' if name == 'train_file' else 'do_eval'}")
    return os.path.join(args.data_dir, path) if args.data_dir else path


@dataclass
class SquadEvalData:
    data: list  # the (possibly sliced) `data` list the metrics read
    examples: list
    features: SquadFeatures


def load_eval_data(obj: dict, args, tokenizer, use_token_type_ids: bool) -> SquadEvalData:
    path = _data_path(args, "predict_file")
    examples = examples_from_squad(obj["data"], args.max_eval_examples)
    data = restrict_dataset(obj["data"], {ex.qas_id for ex in examples}) if args.max_eval_examples else obj["data"]
    impossible = sum(ex.is_impossible for ex in examples)
    if impossible and not args.version_2_with_negative:
        logger.warning("%s has %d unanswerable questions: pass --version_2_with_negative to evaluate it as "
                       "SQuAD 2.0", path, impossible)
    features = convert_examples_to_features(examples, tokenizer, args.max_seq_length, args.doc_stride,
                                            args.max_query_length, False, use_token_type_ids)
    logger.info("evaluation: %d questions, %d windows", len(examples), len(features))
    return SquadEvalData(data, examples, features)


def evaluate_model(model, eval_data: SquadEvalData, tokenizer, args, rt, out_dir: str) -> dict:
    """Predict, write predictions.json / nbest_predictions.json / null_odds.json into `out_dir`, return metrics."""
    model = model.to(rt.device)
    collate = lambda items: pad_collate(items, tokenizer.pad_token_id)  # noqa: E731
    starts, ends = predict_logits(model, eval_data.features, collate, args.per_gpu_eval_batch_size, rt.device,
                                  rt.autocast)
    preds = postprocess_predictions(eval_data.examples, eval_data.features, starts, ends, args.n_best_size,
                                    args.max_answer_length, args.version_2_with_negative,
                                    args.null_score_diff_threshold)
    if args.version_2_with_negative:
        # Official figures of the files written below, plus the toolkit's search over the best non-null answers.
        metrics = squad_v2_report(eval_data.data, preds.predictions, preds.null_odds, preds.best_non_null,
                                  args.null_score_diff_threshold)
    else:
        metrics = evaluate_v1(eval_data.data, preds.predictions, lang=args.mlqa_language)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_json(preds.predictions, os.path.join(out_dir, "predictions.json"))
    atomic_write_json(preds.nbest, os.path.join(out_dir, "nbest_predictions.json"))
    if preds.null_odds is not None:
        atomic_write_json(preds.null_odds, os.path.join(out_dir, "null_odds.json"))
    return metrics


def run(args) -> dict | None:
    """Train and/or evaluate as asked; returns the eval_results.json content (rank 0) or None."""
    from transformers import AutoModelForQuestionAnswering

    model_card.describe_run("fine-tuning", ["fine-tuning"], pipeline_tag="question-answering",
                            datasets=["squad_v2" if args.version_2_with_negative else "squad"])
    if not (args.do_train or args.do_eval):
        raise UserError("nothing to do: pass --do_train and/or --do_eval")
    if args.mlqa_language is not None:
        if args.mlqa_language not in MLQA_LANGUAGES:
            raise UserError(f"--mlqa_language {args.mlqa_language}: expected one of {', '.join(MLQA_LANGUAGES)}")
        if args.version_2_with_negative:
            raise UserError("--mlqa_language evaluates MLQA (SQuAD 1.1 format): drop --version_2_with_negative")
    for name in ("per_gpu_train_batch_size", "per_gpu_eval_batch_size", "n_best_size", "max_answer_length"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    check_length_fits(args.config_name or args.model_name_or_path, args.max_seq_length, "--max_seq_length",
                      "--config_name" if args.config_name else "--model_name_or_path")
    # Validate the data files before loading a model or spending time on training.
    train_obj = read_squad_file(_data_path(args, "train_file"), "--train_file") if args.do_train else None
    eval_obj = read_squad_file(_data_path(args, "predict_file"), "--predict_file") if args.do_eval else None
    ensure_writable_dir(args.output_dir)
    rt = Runtime(args)
    tokenizer = load_task_tokenizer(args)
    use_types = MODEL_TYPES[args.model_type].token_type_ids
    model = load_task_model(args, AutoModelForQuestionAnswering, tokenizer)
    check_max_seq_length(model.config, args.max_seq_length)

    if args.do_train:
        examples = examples_from_squad(train_obj["data"], args.max_train_examples)
        del train_obj
        feats = convert_examples_to_features(examples, tokenizer, args.max_seq_length, args.doc_stride,
                                             args.max_query_length, True, use_types)
        logger.info("training: %d questions (%d skipped), %d windows", len(examples), feats.skipped, len(feats))
        train_task(rt, args, model, feats.items(is_training=True), tokenizer)

    if not args.do_eval or not rt.is_main:
        rt.barrier()
        return None
    eval_data = load_eval_data(eval_obj, args, tokenizer, use_types)
    targets = models_to_evaluate(args)
    results = {}
    for name, folder in targets:
        m = model if folder is None else load_task_model(args, AutoModelForQuestionAnswering, tokenizer, path=folder)
        out_dir = args.output_dir if folder is None or name == "final" else folder
        logger.info("evaluating %s", name if folder is None else folder)
        results[name] = evaluate_model(m, eval_data, tokenizer, args, rt, out_dir)
        logger.info("%s: %s", name, json.dumps(results[name]))
    last = list(results)[-1]
    report = {
        "predict_file": _data_path(args, "predict_file"),
        "version_2_with_negative": bool(args.version_2_with_negative),
        "mlqa_language": args.mlqa_language,
        "num_questions": len(eval_data.examples),
        "num_windows": len(eval_data.features),
        "evaluated": last,
        **results[last],
        "results": results,
    }
    atomic_write_json(report, os.path.join(args.output_dir, "eval_results.json"))
    model_card.note_results(report, args.output_dir)
    rt.barrier()
    return report
