"""SQuAD / MLQA evaluation, equal to the official scripts.

* `evaluate_v1`  – the official SQuAD v1.1 `evaluate-v1.1.py`: exact match and F1, each the max over the gold
  answers, averaged over every question of the dataset (an unanswered question scores 0). With `lang` it is
  MLQA's `mlqa_evaluation_v1.py` instead (language-aware answer normalisation, `normalize_answer(s, lang)`).
* `evaluate_v2`  – the official SQuAD v2.0 `evaluate-v2.0.py`: exact / F1 with the HasAns / NoAns breakdown,
  the no-answer threshold applied to `na_probs`, and the best-threshold search (best_exact, best_exact_thresh,
  best_f1, best_f1_thresh) over `na_probs`.
* `squad_v2_report` – what run_squad.py reports for SQuAD 2.0: the official figures of `predictions.json` +
  `null_odds.json` under the official names (exactly `evaluate-v2.0.py dev-v2.0.json predictions.json
  --na-prob-file null_odds.json --na-prob-thresh T`), plus the toolkit's own search under its own names
  (`best_non_null_exact`, ...). The official search can only admit the answers written in `predictions.json`, where
  every question above the threshold already says "" (admitting it gains nothing); the toolkit's search admits
  each question's best non-null answer, which is what a threshold chosen on dev would actually change.

Normalisation (SQuAD): lower case, drop ASCII punctuation (`string.punctuation`), drop the articles
a/an/the, collapse whitespace. Tokens are the whitespace-split normalised answer.

    F1(pred, gold) = 2 P R / (P + R),  P = |common| / |pred tokens|,  R = |common| / |gold tokens|,
    |common| = size of the multiset intersection of the two token lists.

v1.1 returns 0 when nothing is in common; v2.0 returns `int(pred_tokens == gold_tokens)` when either side has no
tokens (so an empty prediction for an unanswerable question scores 1). Scores are in percent.
"""
from __future__ import annotations

import collections
import logging
import re
import string
import sys
import unicodedata

logger = logging.getLogger("kd")

# ----------------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------------
_ASCII_PUNCT = set(string.punctuation)
_ARTICLES_EN = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    """Official SQuAD normalisation: lower, remove punctuation, remove articles, fix whitespace."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _ASCII_PUNCT)
    s = _ARTICLES_EN.sub(" ", s)
    return " ".join(s.split())


# MLQA (mlqa_evaluation_v1.py): every Unicode punctuation character, per-language articles, and character-level
# segmentation of Chinese.
_MLQA_PUNCT = None
MLQA_WHITESPACE_LANGS = ("en", "es", "hi", "vi", "de", "ar")
MLQA_MIXED_SEGMENTATION_LANGS = ("zh",)
MLQA_LANGUAGES = MLQA_WHITESPACE_LANGS + MLQA_MIXED_SEGMENTATION_LANGS
_MLQA_ARTICLES = {
    "en": re.compile(r"\b(a|an|the)\b"),
    "es": re.compile(r"\b(un|una|unos|unas|el|la|los|las)\b"),
    "vi": re.compile(r"\b(của|là|cái|chiếc|những)\b"),
    "de": re.compile(r"\b(ein|eine|einen|einem|eines|einer|der|die|das|den|dem|des)\b"),
    "ar": re.compile(r"\sال^|ال"),
}


def _mlqa_punct() -> set:
    global _MLQA_PUNCT
    if _MLQA_PUNCT is None:
        _MLQA_PUNCT = {
            chr(i) for i in range(sys.maxunicode) if unicodedata.category(chr(i)).startswith("P")
        } | _ASCII_PUNCT
    return _MLQA_PUNCT


def _mixed_segmentation(text: str, punct: set) -> list[str]:
    """Chinese: every CJK character and punctuation mark is its own token; other runs split on whitespace."""
    segs, run = [], ""
    for char in text:
        if re.search(r"[\u4e00-\u9fa5]", char) or char in punct:
            if run:
                segs.extend(run.split())
                run = ""
            segs.append(char)
        else:
            run += char
    if run:
        segs.extend(run.split())
    return segs


def normalize_answer_mlqa(s: str, lang: str) -> str:
    """MLQA normalisation: lower, remove Unicode punctuation, remove `lang`'s articles, re-segment."""
    if lang not in MLQA_LANGUAGES:
        raise ValueError(f"unknown MLQA language {lang!r} (expected one of {', '.join(MLQA_LANGUAGES)})")
    punct = _mlqa_punct()
    s = s.lower()
    s = "".join(ch for ch in s if ch not in punct)
    if lang in _MLQA_ARTICLES:
        s = _MLQA_ARTICLES[lang].sub(" ", s)
    tokens = s.split() if lang in MLQA_WHITESPACE_LANGS else _mixed_segmentation(s, punct)
    return " ".join(t for t in tokens if t.strip() != "")


def _normalizer(lang: str | None):
    if lang is None:
        return normalize_answer
    if lang not in MLQA_LANGUAGES:
        raise ValueError(f"unknown MLQA language {lang!r} (expected one of {', '.join(MLQA_LANGUAGES)})")
    return lambda s: normalize_answer_mlqa(s, lang)


# ----------------------------------------------------------------------------------------------------------------
# Per-answer scores
# ----------------------------------------------------------------------------------------------------------------
def exact_match_score(prediction: str, ground_truth: str, lang: str | None = None) -> bool:
    norm = _normalizer(lang)
    return norm(prediction) == norm(ground_truth)


def _token_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    """2PR/(P+R) over the multiset intersection; 0 when nothing is in common."""
    num_same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, ground_truth: str, lang: str | None = None) -> float:
    """v1.1 / MLQA token F1 (0 when no token is in common)."""
    norm = _normalizer(lang)
    return _token_f1(norm(prediction).split(), norm(ground_truth).split())


def compute_exact(a_gold: str, a_pred: str) -> int:
    """v2.0 exact match."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """v2.0 token F1: `int(gold == pred)` if either side has no tokens, else the F1 above."""
    gold_toks = normalize_answer(a_gold).split() if a_gold else []
    pred_toks = normalize_answer(a_pred).split() if a_pred else []
    if len(gold_toks) == 0 or len(pred_toks) == 0:
        return float(gold_toks == pred_toks)
    return _token_f1(pred_toks, gold_toks)


# ----------------------------------------------------------------------------------------------------------------
# Dataset-level evaluation
# ----------------------------------------------------------------------------------------------------------------
def _iter_qas(dataset: list):
    for article in dataset:
        for paragraph in article["paragraphs"]:
            yield from paragraph["qas"]


def evaluate_v1(dataset: list, predictions: dict, lang: str | None = None) -> dict:
    """Official v1.1 evaluation (MLQA's when `lang` is given).

    `dataset` is the JSON's `data` list; `predictions` maps question id -> answer text. Every question of the
    dataset counts; one without a prediction scores 0 (and is counted in `missing`, with a warning).
    """
    f1 = exact = 0.0
    total = missing = 0
    for qa in _iter_qas(dataset):
        total += 1
        if qa["id"] not in predictions:
            missing += 1
            continue
        golds = [a["text"] for a in qa["answers"]]
        if not golds:  # a v2 unanswerable question in a v1 evaluation: nothing can match it
            continue
        pred = predictions[qa["id"]]
        exact += max(float(exact_match_score(pred, g, lang)) for g in golds)
        f1 += max(f1_score(pred, g, lang) for g in golds)
    if missing:
        logger.warning("%d of %d questions have no prediction and score 0", missing, total)
    if total == 0:
        raise ValueError("the dataset has no questions")
    return {"exact_match": 100.0 * exact / total, "f1": 100.0 * f1 / total, "total": total, "missing": missing}


def make_qid_to_has_ans(dataset: list) -> dict:
    return {qa["id"]: bool(qa["answers"]) for qa in _iter_qas(dataset)}


def get_raw_scores(dataset: list, preds: dict) -> tuple[dict, dict]:
    exact_scores, f1_scores = {}, {}
    missing = 0
    for qa in _iter_qas(dataset):
        qid = qa["id"]
        gold_answers = [a["text"] for a in qa["answers"] if normalize_answer(a["text"])]
        if not gold_answers:
            gold_answers = [""]  # for unanswerable questions the only correct answer is the empty string
        if qid not in preds:
            missing += 1
            continue
        a_pred = preds[qid]
        exact_scores[qid] = max(compute_exact(a, a_pred) for a in gold_answers)
        f1_scores[qid] = max(compute_f1(a, a_pred) for a in gold_answers)
    if missing:
        logger.warning("%d questions have no prediction; the official v2.0 script leaves them out", missing)
    return exact_scores, f1_scores


def apply_no_ans_threshold(scores: dict, na_probs: dict, qid_to_has_ans: dict, na_prob_thresh: float) -> dict:
    """Where `na_probs[qid] > na_prob_thresh` the answer is taken to be "no answer"."""
    new_scores = {}
    for qid, s in scores.items():
        pred_na = na_probs[qid] > na_prob_thresh
        new_scores[qid] = float(not qid_to_has_ans[qid]) if pred_na else s
    return new_scores


def make_eval_dict(exact_scores: dict, f1_scores: dict, qid_list=None) -> dict:
    if not qid_list:
        total = len(exact_scores)
        return {
            "exact": 100.0 * sum(exact_scores.values()) / total,
            "f1": 100.0 * sum(f1_scores.values()) / total,
            "total": total,
        }
    total = len(qid_list)
    return {
        "exact": 100.0 * sum(exact_scores[k] for k in qid_list) / total,
        "f1": 100.0 * sum(f1_scores[k] for k in qid_list) / total,
        "total": total,
    }


def find_best_thresh(preds: dict, scores: dict, na_probs: dict, qid_to_has_ans: dict) -> tuple[float, float]:
    """Official search: start from "no answer everywhere", then admit answers in order of increasing `na_probs`.

    Returns (best score in percent, the threshold reaching it). The threshold starts at 0.0 as in the official
    script, so when no prefix beats "no answer everywhere" the reported threshold is 0.0.
    """
    num_no_ans = sum(1 for k in qid_to_has_ans if not qid_to_has_ans[k])
    cur_score = best_score = num_no_ans
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if qid_to_has_ans[qid]:
            diff = scores[qid]
        else:
            diff = -1 if preds[qid] else 0
        cur_score += diff
        if cur_score > best_score:
            best_score = cur_score
            best_thresh = na_probs[qid]
    return 100.0 * best_score / len(scores), best_thresh


def evaluate_v2(dataset: list, preds: dict, na_probs: dict | None = None, na_prob_thresh: float = 1.0) -> dict:
    """Official v2.0 evaluation. Without `na_probs` every question gets 0.0 (official default), and no
    threshold search is reported (it would search nothing)."""
    search = na_probs is not None
    if na_probs is None:
        na_probs = {k: 0.0 for k in preds}
    qid_to_has_ans = make_qid_to_has_ans(dataset)
    missing = [q for q in preds if q in qid_to_has_ans and q not in na_probs]
    if missing:
        raise ValueError(f"na_probs has no value for {len(missing)} predicted questions (e.g. {missing[0]})")
    has_ans_qids = [k for k, v in qid_to_has_ans.items() if v]
    no_ans_qids = [k for k, v in qid_to_has_ans.items() if not v]
    exact_raw, f1_raw = get_raw_scores(dataset, preds)
    if not exact_raw:
        raise ValueError("no question of the dataset has a prediction")
    exact_thresh = apply_no_ans_threshold(exact_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    f1_thresh = apply_no_ans_threshold(f1_raw, na_probs, qid_to_has_ans, na_prob_thresh)
    out = make_eval_dict(exact_thresh, f1_thresh)
    # Like the official script, the breakdown is over the dataset's questions (all of which have predictions
    # when they come from this toolkit).
    has_ans_qids = [k for k in has_ans_qids if k in exact_thresh]
    no_ans_qids = [k for k in no_ans_qids if k in exact_thresh]
    if has_ans_qids:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, has_ans_qids).items():
            out[f"HasAns_{k}"] = v
    if no_ans_qids:
        for k, v in make_eval_dict(exact_thresh, f1_thresh, no_ans_qids).items():
            out[f"NoAns_{k}"] = v
    if search:
        best_exact, exact_t = find_best_thresh(preds, exact_raw, na_probs, qid_to_has_ans)
        best_f1, f1_t = find_best_thresh(preds, f1_raw, na_probs, qid_to_has_ans)
        out.update(best_exact=best_exact, best_exact_thresh=exact_t, best_f1=best_f1, best_f1_thresh=f1_t)
    return out


def best_non_null_search(dataset: list, best_non_null: dict, na_probs: dict) -> dict:
    """The official best-threshold search run on each question's best non-null answer (not on predictions.json):
    {"best_non_null_exact", "best_non_null_exact_thresh", "best_non_null_f1", "best_non_null_f1_thresh"}."""
    qid_to_has_ans = make_qid_to_has_ans(dataset)
    exact_raw, f1_raw = get_raw_scores(dataset, best_non_null)
    best_exact, exact_t = find_best_thresh(best_non_null, exact_raw, na_probs, qid_to_has_ans)
    best_f1, f1_t = find_best_thresh(best_non_null, f1_raw, na_probs, qid_to_has_ans)
    return {"best_non_null_exact": best_exact, "best_non_null_exact_thresh": exact_t,
            "best_non_null_f1": best_f1, "best_non_null_f1_thresh": f1_t}


def squad_v2_report(dataset: list, predictions: dict, null_odds: dict, best_non_null: dict,
                    null_score_diff_threshold: float) -> dict:
    """SQuAD 2.0 results as run_squad.py writes them (see the module docstring): `evaluate_v2` of the
    predictions.json content with the null odds as no-answer probabilities, plus `best_non_null_search`."""
    out = evaluate_v2(dataset, predictions, na_probs=null_odds, na_prob_thresh=null_score_diff_threshold)
    out.update(best_non_null_search(dataset, best_non_null, null_odds))
    return out
