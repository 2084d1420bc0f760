"""NLG metrics for seq2seq outputs: ROUGE-1/2/L for summarisation, BLEU-4 / METEOR / ROUGE-L for question
generation, with the papers' post-processing.

* Predictions are WordPiece output joined into words ("the rspca has said ."). `ptb_fix_tokenization` re-joins
  what WordPiece split apart, PTB style ("don ' t" -> "do n't", "' s" -> "'s", "3 , 000" -> "3,000",
  "u . s ." -> "u.s.", "well - known" -> "well-known", ". . ." -> "..."), as s2s-ft / UniLM's evaluation did.
  For QG (PTB-tokenised, lower-cased references) brackets and quotes also become PTB tokens (-lrb-, ``, '').
* ROUGE: Google's `rouge-score`, Porter stemming, F1 averaged over examples, x100.
* QG follows Du et al. (2017)'s evaluation: references are grouped per source sentence (every question asked
  about the same sentence is a reference), and the prediction of the last pair of a group is scored against
  them. BLEU-4 is corpus level (clipped n-gram counts and lengths summed over groups, brevity penalty against
  the reference closest in length). METEOR is nltk's (WordNet synonyms, Porter stems), averaged over groups; the
  papers used the Java METEOR 1.5, so absolute numbers differ slightly. METEOR needs WordNet: the folder
  `../shared/data/nltk_data` (nltk layout), `--nltk_data`, or `NLTK_DATA`; without it METEOR is reported as
  null with a note, and the other metrics are still computed.
"""
from __future__ import annotations

import json
import logging
import math
import os
import string
from collections import Counter, OrderedDict

from kdcore.cli import UserError

logger = logging.getLogger("kd.nlg_metrics")

PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}


# --------------------------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------------------------
def _number_like(word: str) -> bool:
    return bool(word) and all(ch.isdigit() or ch == "," for ch in word) and any(ch.isdigit() for ch in word)


def ptb_fix_tokenization(text: str, ptb_brackets_and_quotes: bool = False) -> str:
    """Undo WordPiece's splitting of PTB tokens in a whitespace-separated prediction (see module docstring)."""
    toks = text.split()
    out: list[str] = []
    in_double, in_single = False, False
    glue_next = False  # the previous token ended with a joining hyphen
    i = 0
    n = len(toks)
    while i < n:
        tok = toks[i]
        nxt = toks[i + 1] if i + 1 < n else None
        joined = False
        if ptb_brackets_and_quotes and tok in PTB_BRACKETS:
            out.append(PTB_BRACKETS[tok])
            i += 1
        elif ptb_brackets_and_quotes and tok == '"':
            out.append("''" if in_double else "``")
            in_double = not in_double
            i += 1
        elif tok == "'" and out and out[-1].endswith("n") and nxt == "t":
            out[-1] = out[-1][:-1]  # "don ' t" -> "do n't"
            if not out[-1]:
                out.pop()
            out.append("n't")
            i += 2
        elif tok == "'" and nxt in ("s", "d", "ll", "re", "ve", "m"):
            out.append("'" + nxt)
            i += 2
        elif tok == "'" and ptb_brackets_and_quotes:
            out.append("'" if in_single else "`")
            in_single = not in_single
            i += 1
        elif tok == "." and nxt == "." and i + 2 < n and toks[i + 2] == ".":
            out.append("...")
            i += 3
        elif tok == "," and out and _number_like(out[-1]) and nxt is not None and nxt.isdigit():
            out[-1] += "," + nxt  # "3 , 000" -> "3,000"
            i += 2
        elif tok == "." and out and out[-1].isdigit() and nxt is not None and nxt.isdigit():
            out[-1] += "." + nxt  # "3 . 03" -> "3.03"
            i += 2
        elif (tok == "." and out and len(out[-1]) == 1 and out[-1].isalpha() and nxt is not None
              and len(nxt) == 1 and nxt.isalpha() and i + 2 < n and toks[i + 2] == "."):
            # "u . s ." -> "u.s." (any run of single letters each followed by a period)
            k = i
            while k + 2 < n and len(toks[k + 1]) == 1 and toks[k + 1].isalpha() and toks[k + 2] == ".":
                k += 2
            out[-1] += "".join(toks[i:k + 1])
            i = k + 1
        elif tok == "-" and nxt == "-":
            out.append("--")
            i += 2
        elif (tok == "-" and out and nxt is not None and out[-1] not in string.punctuation
              and nxt[0] not in string.punctuation):
            out[-1] += "-"  # "well - known" -> "well-known"
            joined = True
            i += 1
        elif glue_next and out and tok[0] not in string.punctuation:
            out[-1] += tok
            i += 1
        else:
            out.append(tok)
            i += 1
        glue_next = joined
    return " ".join(out)


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------
def rouge_scores(predictions: list[str], references: list[list[str]] | list[str]) -> dict:
    """ROUGE-1/2/L F1 x100 (rouge-score, Porter stemming), averaged; several references: the best one counts."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, refs in zip(predictions, references):
        refs = [refs] if isinstance(refs, str) else refs
        scores = scorer.score_multi(refs, pred) if len(refs) > 1 else scorer.score(refs[0], pred)
        for key in totals:
            totals[key] += scores[key].fmeasure
    count = max(1, len(predictions))
    return {key: 100.0 * value / count for key, value in totals.items()}


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: list[list[str]], references: list[list[list[str]]], max_n: int = 4) -> float:
    """Corpus BLEU-n x100 (Papineni et al.; the coco-caption / Du et al. variant).

        p_n  = sum_h sum_g min(c_h(g), max_r c_r(g)) / sum_h max(0, |h| - n + 1)     (clipped n-gram precision)
        BP   = 1 if C > R else exp(1 - R / C),   C = sum_h |h|,  R = sum_h |r*(h)|, r*(h) the reference closest
               in length to h (the shorter one on a tie)
        BLEU = BP * exp(mean_n log p_n)          (0 when some p_n is 0)
    """
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references):
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in refs)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            max_ref = Counter()
            for r in refs:
                for gram, c in _ngrams(r, n).items():
                    max_ref[gram] = max(max_ref[gram], c)
            matches[n - 1] += sum(min(c, max_ref[g]) for g, c in counts.items())
            totals[n - 1] += max(0, len(hyp) - n + 1)
    if hyp_len == 0 or any(m == 0 for m in matches):
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1.0 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_precision)


def find_wordnet(nltk_data: str | None = None) -> str | None:
    """Make nltk see WordNet; returns the folder that holds it, or None when none is found."""
    import nltk

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    candidates = [nltk_data, os.environ.get("KD_SHARED_DATA") and os.path.join(os.environ["KD_SHARED_DATA"], "nltk_data"),
                  os.path.join(os.path.dirname(here), "shared", "data", "nltk_data"),
                  os.path.join(os.getcwd(), "..", "shared", "data", "nltk_data")]
    for folder in candidates:
        if folder and os.path.isdir(os.path.join(folder, "corpora", "wordnet")):
            folder = os.path.abspath(folder)
            if folder not in nltk.data.path:
                nltk.data.path.insert(0, folder)
            return folder
    try:  # NLTK_DATA or nltk's default locations
        path = nltk.data.find("corpora/wordnet")
        return os.path.dirname(os.path.dirname(str(path)))
    except LookupError:
        return None


def meteor(hypotheses: list[list[str]], references: list[list[list[str]]]) -> float:
    """nltk METEOR x100, averaged over hypotheses (needs WordNet; see `find_wordnet`)."""
    from nltk.translate.meteor_score import meteor_score

    if not hypotheses:
        return 0.0
    return 100.0 * sum(meteor_score(refs, hyp) for hyp, refs in zip(hypotheses, references)) / len(hypotheses)


def group_by_source(predictions: list[str], references: list[str], sources: list[str]):
    """Du et al.'s grouping: one item per distinct source sentence (lower-cased), with every reference asked
    about it, scored with the prediction of its last pair. Order of first appearance."""
    groups: OrderedDict[str, dict] = OrderedDict()
    for pred, ref, src in zip(predictions, references, sources):
        key = src.strip().lower()
        g = groups.setdefault(key, {"pred": pred, "refs": []})
        g["pred"] = pred
        g["refs"].append(ref)
    return list(groups.values())


def score_summarization(predictions: list[str], references: list[str]) -> dict:
    preds = [ptb_fix_tokenization(p) for p in predictions]
    out = {"task": "summarization", "count": len(preds)}
    out.update(rouge_scores(preds, references))
    return out


def score_question_generation(predictions: list[str], references: list[str], sources: list[str],
                              nltk_data: str | None = None) -> dict:
    preds = [ptb_fix_tokenization(p, ptb_brackets_and_quotes=True).lower() for p in predictions]
    refs = [r.strip().lower() for r in references]
    groups = group_by_source(preds, refs, sources)
    hyp_tokens = [g["pred"].split() for g in groups]
    ref_tokens = [[r.split() for r in g["refs"]] for g in groups]
    out = {"task": "qg", "count": len(preds), "groups": len(groups),
           "bleu4": corpus_bleu(hyp_tokens, ref_tokens)}
    wordnet = find_wordnet(nltk_data)
    if wordnet is None:
        out["meteor"] = None
        out["meteor_note"] = ("METEOR not computed: WordNet not found (give --nltk_data pointing at a folder with "
                              "corpora/wordnet, e.g. ../shared/data/nltk_data, or set NLTK_DATA)")
        logger.warning(out["meteor_note"])
    else:
        out["meteor"] = meteor(hyp_tokens, ref_tokens)
        out["wordnet"] = wordnet
    out["rougeL"] = rouge_scores([g["pred"] for g in groups], [g["refs"] for g in groups])["rougeL"]
    return out


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------
def read_lines(path: str, argname: str) -> list[str]:
    if not path or not os.path.isfile(path):
        raise UserError(f"{argname}: no such file: {path}")
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def read_references(path: str, argname: str = "--gold") -> tuple[list[str], list[str] | None]:
    """References (and sources, if present) from JSON lines with "tgt" (and "src"), or plain text lines."""
    from .seq2seq_data import iter_json_lines

    lines = read_lines(path, argname)
    if lines and lines[0].lstrip().startswith("{"):
        refs, srcs = [], []
        for lineno, obj in iter_json_lines(path, argname):
            if not isinstance(obj, dict) or "tgt" not in obj:
                raise UserError(f"{path}:{lineno}: no \"tgt\" field to score against")
            join = lambda v: v if isinstance(v, str) else " ".join(v)  # noqa: E731
            refs.append(join(obj["tgt"]))
            srcs.append(join(obj["src"]) if "src" in obj else None)
        return refs, (srcs if all(s is not None for s in srcs) else None)
    return lines, None


def score_files(pred_file: str, gold_file: str, task: str, src_file: str | None = None,
                nltk_data: str | None = None) -> dict:
    """Score a prediction file (one line per example) against references; see `read_references`."""
    preds = read_lines(pred_file, "--pred")
    refs, srcs = read_references(gold_file)
    if src_file:
        srcs = read_lines(src_file, "--src_file")
    if not refs:
        raise UserError(f"--gold {gold_file}: no references")
    if len(preds) != len(refs):
        raise UserError(f"--pred {pred_file} has {len(preds)} lines but --gold {gold_file} has {len(refs)} references")
    if task == "qg":
        if srcs is None or len(srcs) != len(refs):
            raise UserError("QG scoring groups references per source sentence: give --gold as JSON lines with "
                            "\"src\", or --src_file with one source a line")
        result = score_question_generation(preds, refs, srcs, nltk_data)
    else:
        result = score_summarization(preds, refs)
    result.update({"pred": os.path.abspath(pred_file), "gold": os.path.abspath(gold_file)})
    return result


def run(args) -> dict:
    """eval_seq2seq.py: score --pred against --gold, write --output_json (default <pred>.scores.json)."""
    from kdcore.modeling import atomic_write_json

    task = "qg" if args.task == "qg" else "summarization"
    scores = score_files(args.pred, args.gold, task, src_file=args.src_file, nltk_data=args.nltk_data)
    atomic_write_json(scores, args.output_json or args.pred + ".scores.json")
    print(json.dumps(scores, indent=2))
    return scores
