"""NLG metrics for seq2seq outputs: ROUGE-1/2/L for summarisation, BLEU-4 / METEOR / ROUGE-L for question
generation, with the post-processing of UniLM's evaluation scripts.

* Predictions are WordPiece output joined into words ("the rspca has said ."). `unilm_fix_tokenization`
  re-joins what WordPiece split apart, with the rules of UniLM's `fix_tokenization` for the task
  (unilm-v1 `qg/eval.py`, s2s-ft `evaluations/eval_for_xsum.py` / `eval_for_cnndm.py`); see its docstring.
* Summarisation ROUGE: Google's `rouge-score`, Porter stemming, F1 averaged over examples, x100 (the papers used
  pyrouge / ROUGE-1.5.5, so absolute numbers differ slightly).
* QG follows Du et al. (2017)'s evaluation (`qgevalcap`, coco-caption's scorers), which UniLM and MiniLM report:
  references are grouped per source sentence (every question asked about the same sentence is a reference), and
  the prediction of the last pair of a group is scored against them.
  - BLEU-4 is corpus level (clipped n-gram counts and lengths summed over groups, brevity penalty against the
    reference closest in length).
  - ROUGE-L (`rougeL`) is coco-caption's: whitespace tokens, no stemming, precision and recall each maximised
    over the references, F with beta = 1.2, averaged over groups (`coco_rouge_l`). rouge-score's ROUGE-L (F1,
    stemming, best F over references) is kept as `rougeL_rouge_score`; the two differ by several points.
  - METEOR is nltk's (WordNet synonyms, Porter stems), averaged over groups; the papers used the Java METEOR
    1.5, so absolute numbers differ slightly. METEOR needs WordNet: the folder `../shared/data/nltk_data`
    (nltk layout), `--nltk_data`, or `NLTK_DATA`; without it METEOR is reported as null with a note, and the
    other metrics are still computed.
"""
from __future__ import annotations

import json
import logging
import math
import os
import string
from collections import Counter, OrderedDict

from kdcore.cli import UserError, require_file
from kdcore.files import atomic_write_json, check_writable_file, read_text_lines
from .seq2seq_data import iter_json_lines

logger = logging.getLogger("kd.nlg_metrics")

# Single tokens the evaluation scripts replace before scoring. QG: PTB brackets as in Du et al.'s references, and
# the HTML escapes / unknown-word spelling of those references. CNN/DM: upper-case PTB brackets. XSum: none.
QG_TOKEN_MAP = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-",
                "[UNK]": "UNK", "&": "&amp;", "<": "&lt;", ">": "&gt;"}
CNNDM_TOKEN_MAP = {"(": "-LRB-", ")": "-RRB-", "[": "-LSB-", "]": "-RSB-", "{": "-LCB-", "}": "-RCB-"}
# task -> (token map, PTB quotes ``/'' and `/', hyphen joining)
DETOKENIZATION_RULES = {
    "qg": (QG_TOKEN_MAP, True, True),
    "cnndm": (CNNDM_TOKEN_MAP, True, True),
    "summarization": ({}, False, False),  # XSum's script: no map, no quotes, no hyphen rule
}


# --------------------------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------------------------
def _digits_and_commas(word: str) -> bool:
    # As the original's test: every character a digit or a comma (so "," itself and "" pass too).
    return all(ch.isdigit() or ch == "," for ch in word)


def _single_upper(word: str) -> bool:
    return len(word) == 1 and word.isupper()


def unilm_fix_tokenization(text: str, task: str = "summarization") -> str:
    """UniLM's `fix_tokenization` for `task` ("qg", "cnndm", or "summarization" = XSum's), rule for rule.

    Applied left to right to the whitespace tokens, first matching rule wins:
      1. the task's token map (QG: "(" -> "-lrb-", "[UNK]" -> "UNK", "&" -> "&amp;", ...);
      2. (QG, CNN/DM) '"' alternates between `` and '';
      3. "X ' t" with X ending in n -> "X[:-1] n't" ("don ' t" -> "do n't");
      4. "' s" / "' d" / "' ll" -> "'s" / "'d" / "'ll" (not 're, 've, 'm);
      5. (QG, CNN/DM) any other "'" alternates between ` and ';
      6. ". . ." -> "...";
      7. "," between tokens made of digits and commas joins them ("3 , 000" -> "3,000");
      8. "." between two digit tokens joins them ("3 . 5" -> "3.5");
      9. "A . B ." with single UPPER-case letters -> "A.B." followed by "." again (the original advances two
         tokens after joining three, so the closing period is emitted twice; its scan for longer runs never
         matches). Lower-case output ("u . s .") is left alone: on uncased models the rule never fires;
     10. (QG, CNN/DM) "- -" -> "--"; a "-" first or last stays; "a - b" with neither side punctuation joins
         into "a-b" (the word after the hyphen is glued on); otherwise "-" stays.
    QG predictions are lower-cased afterwards by the caller, as in the original.
    """
    if task not in DETOKENIZATION_RULES:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(DETOKENIZATION_RULES)}")
    token_map, ptb_quotes, join_hyphens = DETOKENIZATION_RULES[task]
    toks = text.split()
    n = len(toks)
    out: list[str] = []
    in_double = in_single = False
    after_hyphen = False  # the previous token was a joining hyphen: glue the next word on
    i = 0
    while i < n:
        tok = toks[i]
        nxt = toks[i + 1] if i + 1 < n else None
        joined_hyphen = False
        if tok in token_map:
            out.append(token_map[tok])
            i += 1
        elif ptb_quotes and tok == '"':
            out.append("''" if in_double else "``")
            in_double = not in_double
            i += 1
        elif tok == "'" and out and out[-1].endswith("n") and nxt == "t":
            out[-1] = out[-1][:-1]
            out.append("n't")
            i += 2
        elif tok == "'" and nxt in ("s", "d", "ll"):
            out.append("'" + nxt)
            i += 2
        elif ptb_quotes and tok == "'":
            out.append("'" if in_single else "`")
            in_single = not in_single
            i += 1
        elif tok == "." and i + 2 < n and toks[i + 1] == "." and toks[i + 2] == ".":
            out.append("...")
            i += 3
        elif tok == "," and out and _digits_and_commas(out[-1]) and nxt is not None and _digits_and_commas(nxt):
            out[-1] += "," + nxt
            i += 2
        elif tok == "." and out and out[-1].isdigit() and nxt is not None and nxt.isdigit():
            out[-1] += "." + nxt
            i += 2
        elif (tok == "." and out and _single_upper(out[-1]) and i + 2 < n and _single_upper(toks[i + 1])
              and toks[i + 2] == "."):
            end = i + 3
            while end + 2 < n and _single_upper(toks[end + 1]) and toks[end + 2] == ".":
                end += 2
            out[-1] += "".join(toks[i:end])
            i += 2
        elif join_hyphens and tok == "-":
            if nxt == "-":
                out.append("--")
                i += 2
            elif i == 0 or nxt is None:
                out.append("-")
                i += 1
            elif out[-1] not in string.punctuation and nxt[0] not in string.punctuation:
                out[-1] += "-"  # substring test, as the original: "" and runs like "!\"" count as punctuation
                joined_hyphen = True
                i += 1
            else:
                out.append("-")
                i += 1
        elif after_hyphen and out and tok[0] not in string.punctuation:
            out[-1] += tok
            i += 1
        else:
            out.append(tok)
            i += 1
        after_hyphen = joined_hyphen
    return " ".join(out)


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------
def rouge_scores(predictions: list[str], references: list[list[str]] | list[str]) -> dict:
    """ROUGE-1/2/L F1 x100 (rouge-score, Porter stemming), averaged; several references: the best F counts."""
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


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (dynamic programming, O(|a| |b|))."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def coco_rouge_l(candidate: str, references: list[str], beta: float = 1.2) -> float:
    """coco-caption's ROUGE-L of one candidate (the QG papers' ROUGE-L), in [0, 1].

        P = max_r LCS(c, r) / |c|,   R = max_r LCS(c, r) / |r|     (each maximised over the references alone)
        ROUGE-L = (1 + beta^2) P R / (R + beta^2 P),   beta = 1.2;   0 when P or R is 0

    Tokens are the whitespace-separated words as given: no stemming, no lower-casing, punctuation counts.
    """
    cand = candidate.split()
    if not cand or not references:
        return 0.0
    precision = recall = 0.0
    for ref in references:
        ref_tokens = ref.split()
        if not ref_tokens:
            continue
        lcs = lcs_length(ref_tokens, cand)
        precision = max(precision, lcs / len(cand))
        recall = max(recall, lcs / len(ref_tokens))
    if precision == 0.0 or recall == 0.0:
        return 0.0
    b2 = beta * beta
    return (1 + b2) * precision * recall / (recall + b2 * precision)


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
    """Make nltk see WordNet; returns the folder that holds it, or None when none is found. A folder given
    explicitly must hold it (another WordNet found elsewhere would silently stand in for it)."""
    import nltk

    if nltk_data and not os.path.isdir(os.path.join(nltk_data, "corpora", "wordnet")):
        raise UserError(f"--nltk_data {nltk_data}: no corpora/wordnet there")

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


def score_summarization(predictions: list[str], references: list[str], task: str = "summarization") -> dict:
    """ROUGE-1/2/L (rouge-score) of predictions post-processed with `task`'s rules (XSum's, or "cnndm")."""
    preds = [unilm_fix_tokenization(p, task) for p in predictions]
    out = {"task": task, "count": len(preds)}
    out.update(rouge_scores(preds, references))
    return out


def score_question_generation(predictions: list[str], references: list[str], sources: list[str],
                              nltk_data: str | None = None) -> dict:
    """BLEU-4, METEOR and ROUGE-L as Du et al.'s / UniLM's QG evaluation (see the module docstring)."""
    preds = [unilm_fix_tokenization(p, "qg").lower() for p in predictions]
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
    out["rougeL"] = 100.0 * sum(coco_rouge_l(g["pred"], g["refs"]) for g in groups) / max(1, len(groups))
    out["rougeL_rouge_score"] = rouge_scores([g["pred"] for g in groups], [g["refs"] for g in groups])["rougeL"]
    return out


# --------------------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------------------
def read_references(path: str, argname: str = "--gold") -> tuple[list[str], list[str] | None]:
    """References (and sources, if present) from JSON lines with "tgt" (and "src"), or plain text lines."""
    lines = read_text_lines(path, argname)
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
    preds = read_text_lines(pred_file, "--pred")
    refs, srcs = read_references(gold_file)
    if src_file:
        srcs = read_text_lines(src_file, "--src_file")
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
        result = score_summarization(preds, refs, "cnndm" if task == "cnndm" else "summarization")
    result.update({"pred": os.path.abspath(pred_file), "gold": os.path.abspath(gold_file)})
    return result


def run(args) -> dict:
    """eval_seq2seq.py: score --pred against --gold, write --output_json (default <pred>.scores.json)."""
    task = args.task if args.task in ("qg", "cnndm") else "summarization"  # xsum: XSum's rules
    require_file(args.pred, "--pred")
    # checked before the work; an output the user did not name is named by where it comes from
    out = check_writable_file(args.output_json or args.pred + ".scores.json",
                              "--output_json" if args.output_json else "the scores file beside --pred")
    scores = score_files(args.pred, args.gold, task, src_file=args.src_file, nltk_data=args.nltk_data)
    atomic_write_json(scores, out)
    print(json.dumps(scores, indent=2))
    return scores
