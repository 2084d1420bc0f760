"""SQuAD v1.1 / v2.0 / MLQA metrics against hand-computed values."""
import pytest

from minilm.squad_metrics import (
    compute_f1,
    evaluate_v1,
    evaluate_v2,
    squad_v2_report,
    f1_score,
    normalize_answer,
    normalize_answer_mlqa,
)


def _dataset(questions):
    """questions: [(id, [gold texts])] -> a SQuAD `data` list (one article, one paragraph)."""
    qas = [{"id": qid, "question": "q?", "answers": [{"text": t, "answer_start": 0} for t in golds],
            "is_impossible": not golds} for qid, golds in questions]
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]


def test_normalize_answer_lower_punct_articles_whitespace():
    assert normalize_answer("The  Quick, brown-fox!") == "quick brownfox"
    assert normalize_answer("  An apple a day ") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # articles only as whole words


def test_v1_exact_and_f1_by_hand():
    data = _dataset([("q1", ["the cat", "a dog"]), ("q2", ["New York City"]), ("q3", ["x"])])
    # q1: "Cat." normalises to "cat" = "the cat" -> EM 1, F1 1.
    # q2: pred tokens {york, city, now}, gold {new, york, city}: 2 common, P = R = 2/3 -> F1 2/3, EM 0.
    # q3: no prediction -> 0 (and it still counts in the total).
    out = evaluate_v1(data, {"q1": "Cat.", "q2": "york city now"})
    assert out["total"] == 3 and out["missing"] == 1
    assert out["exact_match"] == pytest.approx(100 * 1 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_v1_vs_v2_f1_on_empty_answers():
    # v1.1: nothing in common -> 0, even when both normalise to nothing.
    assert f1_score("the", "a") == 0.0
    # v2.0: if either side has no tokens, F1 = (pred tokens == gold tokens).
    assert compute_f1("", "") == 1.0
    assert compute_f1("the", "") == 1.0  # "the" normalises to no tokens
    assert compute_f1("Paris", "") == 0.0
    # tokens count as a multiset: gold "x y y", pred "x x y" -> common {x, y} = 2 tokens; P = R = 2/3
    assert compute_f1("x y y", "x x y") == pytest.approx(2 / 3)


# A SQuAD 2.0 case whose threshold search is worked out by hand.
#   id  has answer  best non-null prediction  raw EM  raw F1   null odds
#   h1  Paris       "Paris"                   1       1        -2.0
#   h2  blue whale  "whale"                   0       2/3       0.5   (P = 1, R = 1/2)
#   h3  1990        "1991"                    0       0         1.5
#   n1  -           "something"               0       0         0.7
#   n2  -           "foo"                     0       0         3.0
#   n3  -           "bar"                     0       0         1.0
V2_DATA = _dataset([("h1", ["Paris"]), ("h2", ["blue whale"]), ("h3", ["1990"]), ("n1", []), ("n2", []), ("n3", [])])
V2_PREDS = {"h1": "Paris", "h2": "whale", "h3": "1991", "n1": "something", "n2": "foo", "n3": "bar"}
V2_NULL_ODDS = {"h1": -2.0, "h2": 0.5, "h3": 1.5, "n1": 0.7, "n2": 3.0, "n3": 1.0}


def test_v2_threshold_and_breakdown_by_hand():
    out = evaluate_v2(V2_DATA, V2_PREDS, na_probs=V2_NULL_ODDS, na_prob_thresh=0.0)
    # Threshold 0: "no answer" wherever null odds > 0, i.e. everywhere but h1.
    # EM = F1: h1 1, h2 0, h3 0, n1 1, n2 1, n3 1 -> 4/6.
    assert out["total"] == 6
    assert out["exact"] == pytest.approx(100 * 4 / 6)
    assert out["f1"] == pytest.approx(100 * 4 / 6)
    assert (out["HasAns_total"], out["NoAns_total"]) == (3, 3)
    assert out["HasAns_exact"] == pytest.approx(100 / 3) and out["HasAns_f1"] == pytest.approx(100 / 3)
    assert out["NoAns_exact"] == pytest.approx(100.0) and out["NoAns_f1"] == pytest.approx(100.0)
    # Search: start from "no answer everywhere" = 3 (the three unanswerable), admit answers by rising odds:
    #   h1 (-2.0): +1 -> 4 | h2 (0.5): EM +0 -> 4, F1 +2/3 -> 4.667 | n1 (0.7): -1 | n3 (1.0): -1 | h3: 0 | n2: -1
    # best EM 4/6 first reached at -2.0; best F1 4.667/6 reached at 0.5.
    assert out["best_exact"] == pytest.approx(100 * 4 / 6)
    assert out["best_exact_thresh"] == -2.0
    assert out["best_f1"] == pytest.approx(100 * (4 + 2 / 3) / 6)
    assert out["best_f1_thresh"] == 0.5


def test_v2_thresholded_predictions_score_the_same():
    # predictions.json holds "" where null odds > threshold; scoring it equals scoring the non-null answers with
    # the null odds (what run_squad.py does).
    thresholded = {q: "" if V2_NULL_ODDS[q] > 0.0 else p for q, p in V2_PREDS.items()}
    a = evaluate_v2(V2_DATA, V2_PREDS, na_probs=V2_NULL_ODDS, na_prob_thresh=0.0)
    b = evaluate_v2(V2_DATA, thresholded, na_probs=V2_NULL_ODDS, na_prob_thresh=0.0)
    for key in ("exact", "f1", "HasAns_exact", "NoAns_exact"):
        assert a[key] == pytest.approx(b[key])


def test_v2_report_official_figures_of_the_files_and_the_toolkit_search_by_hand():
    # predictions.json at threshold 0: "Paris" for h1, "" everywhere else.
    written = {q: "" if V2_NULL_ODDS[q] > 0.0 else p for q, p in V2_PREDS.items()}
    out = squad_v2_report(V2_DATA, written, V2_NULL_ODDS, V2_PREDS, 0.0)
    assert out["exact"] == pytest.approx(100 * 4 / 6) and out["f1"] == pytest.approx(100 * 4 / 6)
    # Official search over predictions.json: start 3, h1 +1 -> 4 at -2.0; every other question's written answer
    # is "" and adds 0 (h2 scores 0 against "blue whale"; n1, n3, n2 are right with "" either way).
    assert out["best_exact"] == pytest.approx(100 * 4 / 6) and out["best_exact_thresh"] == -2.0
    assert out["best_f1"] == pytest.approx(100 * 4 / 6) and out["best_f1_thresh"] == -2.0
    # The toolkit's search admits the best non-null answers instead (worked out above): F1 4.667/6 at 0.5.
    assert out["best_non_null_exact"] == pytest.approx(100 * 4 / 6) and out["best_non_null_exact_thresh"] == -2.0
    assert out["best_non_null_f1"] == pytest.approx(100 * (4 + 2 / 3) / 6)
    assert out["best_non_null_f1_thresh"] == 0.5


def test_v2_report_toy_case_official_100_vs_search():
    # q1 answerable, written "" (odds 0.5 > 0) although its best non-null answer is right; q2 unanswerable
    # (odds 2.0); q3 answerable and right (odds -1). Official: EM 2/3; its search cannot gain (q1 is "" in the
    # file). Searching the non-null answers: q3 +1, q1 +1 -> 3/3 at threshold 0.5, then q2 -1.
    data = _dataset([("q1", ["Paris"]), ("q2", []), ("q3", ["Rome"])])
    written = {"q1": "", "q2": "", "q3": "Rome"}
    non_null = {"q1": "Paris", "q2": "London", "q3": "Rome"}
    odds = {"q1": 0.5, "q2": 2.0, "q3": -1.0}
    out = squad_v2_report(data, written, odds, non_null, 0.0)
    assert out["exact"] == pytest.approx(200 / 3) and out["best_exact"] == pytest.approx(200 / 3)
    assert out["best_non_null_exact"] == pytest.approx(100.0) and out["best_non_null_exact_thresh"] == 0.5


def test_v2_without_null_odds_scores_raw_answers_and_reports_no_search():
    out = evaluate_v2(V2_DATA, V2_PREDS)
    # Only h1 is right; every unanswerable question got a non-empty answer.
    assert out["exact"] == pytest.approx(100 / 6)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3) / 6)
    assert "best_exact" not in out


def test_mlqa_normalisation_is_language_aware():
    assert normalize_answer_mlqa("Der Hund", "de") == "hund"
    assert normalize_answer("Der Hund") == "der hund"
    assert normalize_answer_mlqa("«El perro»", "es") == "perro"  # Unicode punctuation and Spanish articles
    assert normalize_answer("«El perro»") == "«el perro»"
    assert normalize_answer_mlqa("الكتاب", "ar") == "كتاب"
    assert normalize_answer_mlqa("北京大学,", "zh") == "北 京 大 学"
    # zh: characters are tokens, so a partial answer gets partial credit (P = 1, R = 1/2).
    assert f1_score("北京", "北京大学", "zh") == pytest.approx(2 / 3)
    assert f1_score("北京", "北京大学") == 0.0
    with pytest.raises(ValueError):
        normalize_answer_mlqa("x", "xx")


def test_mlqa_evaluate_uses_language():
    data = _dataset([("q1", ["das Haus"]), ("q2", ["Berlin"])])
    preds = {"q1": "dem Haus", "q2": "in Berlin"}
    de = evaluate_v1(data, preds, lang="de")
    en = evaluate_v1(data, preds)
    # de: q1 "haus" = "haus" (EM 1); q2 {in, berlin} vs {berlin}: P 1/2, R 1 -> F1 2/3.
    assert de["exact_match"] == pytest.approx(50.0)
    assert de["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    # SQuAD normalisation keeps German articles: q1 {dem, haus} vs {das, haus} -> F1 1/2, EM 0.
    assert en["exact_match"] == 0.0
    assert en["f1"] == pytest.approx(100 * (0.5 + 2 / 3) / 2)
