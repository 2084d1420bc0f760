"""eval_embeddings.py: the metrics against hand-computed values, the data as the scorecard reads it, the probe's
choice of C made without the dev set, and whole scorecards of tiny models (a HF encoder and a static table) on real
data subsets, cross-checked against eval_sts.py's own STS-B score."""
import json
import math
import os

import numpy as np
import pytest

from kdcore.sentence_embeddings import folder_sts_spearman, read_sts
from pipelines.embedding_scorecard import (
    AVERAGE_OF, PROBE_C_GRID, average_precision, cosine_rows, dcg_at_k, linear_probe, load_scorecard_data,
    ndcg_at_k, reciprocal_rank_at_k, retrieval_scores, row_names,
)
from pipelines.scripts.eval_embeddings import main as eval_embeddings


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------
def test_dcg_and_ndcg_match_the_textbook_example():
    # Relevances 3, 2, 3, 0, 1, 2 in ranked order; the collection also holds unretrieved documents of relevance 3
    # and 2 (the example of Wikipedia's "Discounted cumulative gain" page): DCG6 = 6.861, IDCG6 = 8.740.
    ranked = [3, 2, 3, 0, 1, 2]
    hand_dcg = 3 + 2 / math.log2(3) + 3 / 2 + 0 + 1 / math.log2(6) + 2 / math.log2(7)
    assert dcg_at_k(ranked, 6) == pytest.approx(hand_dcg) == pytest.approx(6.861, abs=1e-3)
    hand_idcg = 3 + 3 / math.log2(3) + 3 / 2 + 2 / math.log2(5) + 2 / math.log2(6) + 2 / math.log2(7)
    assert hand_idcg == pytest.approx(8.740, abs=1e-3)
    assert ndcg_at_k(ranked, 6, all_gains=ranked + [3, 2]) == pytest.approx(hand_dcg / hand_idcg)
    assert ndcg_at_k(ranked, 6, all_gains=ranked + [3, 2]) == pytest.approx(0.785, abs=1e-3)
    # without the unretrieved documents, the ideal is the ranking sorted: 3, 3, 2, 2, 1, 0
    ideal = 3 + 3 / math.log2(3) + 2 / 2 + 2 / math.log2(5) + 1 / math.log2(6)
    assert ndcg_at_k(ranked, 6) == pytest.approx(hand_dcg / ideal)


def test_ndcg_and_reciprocal_rank_with_one_relevant_document():
    assert ndcg_at_k([1, 0, 0], 10, all_gains=[1]) == 1.0
    assert ndcg_at_k([0, 1, 0], 10, all_gains=[1]) == pytest.approx(1 / math.log2(3))  # 0.6309
    assert ndcg_at_k([0, 0, 0, 1], 3, all_gains=[1]) == 0.0  # below the cut-off
    assert ndcg_at_k([0, 0], 10) == 0.0  # nothing relevant anywhere: IDCG = 0
    assert reciprocal_rank_at_k([0, 0, 1, 1], 10) == pytest.approx(1 / 3)
    assert reciprocal_rank_at_k([0] * 10 + [1], 10) == 0.0
    assert reciprocal_rank_at_k([True], 1) == 1.0


def test_retrieval_scores_rank_by_similarity_and_average_over_queries():
    sim = np.array([[0.9, 0.1, 0.2, 0.3],    # relevant doc 0 ranked 1st
                    [0.5, 0.9, 0.1, 0.0],    # relevant doc 0 ranked 2nd
                    [0.4, 0.3, 0.2, 0.1],    # relevant doc 3 ranked 4th
                    [0.5, 0.5, 0.5, 0.5]])   # a tie: documents keep their column order, doc 2 is 3rd
    relevant = np.array([0, 0, 3, 2])
    ndcg = [1, 1 / math.log2(3), 1 / math.log2(5), 1 / math.log2(4)]
    rr = [1, 1 / 2, 1 / 4, 1 / 3]
    got = retrieval_scores(sim, relevant, k=10)
    assert got["ndcg@10"] == pytest.approx(100 * np.mean(ndcg))
    assert got["mrr@10"] == pytest.approx(100 * np.mean(rr))
    cut = retrieval_scores(sim, relevant, k=3)  # the 4th-ranked hit falls out
    assert cut["ndcg@3"] == pytest.approx(100 * np.mean(ndcg[:2] + [0, ndcg[3]]))
    assert cut["mrr@3"] == pytest.approx(100 * np.mean(rr[:2] + [0, rr[3]]))


def test_average_precision_and_cosine_by_hand():
    # ranked by score: +, -, +, -  ->  precision at the two hits 1/1 and 2/3  ->  AP = (1 + 2/3) / 2
    assert average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.2, 0.3], [0, 0, 1]) == pytest.approx(1.0)
    assert cosine_rows(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]),
                       np.array([[0.0, 2.0], [2.0, 2.0], [1.0, 0.0]])) == pytest.approx([0.0, 1.0, 0.0])


def test_the_probe_chooses_c_on_training_rows_only():
    rng = np.random.default_rng(0)
    x, x_dev = rng.normal(size=(200, 5)), rng.normal(size=(100, 5))
    y, y_dev = (x[:, 0] + 0.3 * x[:, 1] > 0).astype(int), (x_dev[:, 0] + 0.3 * x_dev[:, 1] > 0).astype(int)
    right = linear_probe(x, y, x_dev, y_dev, "acc", seed=0)
    flipped = linear_probe(x, y, x_dev, 1 - y_dev, "acc", seed=0)  # dev labels changed: the choice must not move
    assert set(right["selection"]) == {str(c) for c in PROBE_C_GRID} and right["C"] in PROBE_C_GRID
    assert flipped["C"] == right["C"] and flipped["selection"] == right["selection"]
    assert right["score"] > 90 and right["score"] + flipped["score"] == pytest.approx(100)
    fixed = linear_probe(x, y, x_dev, y_dev, "mcc", seed=0, c=0.5)
    assert fixed["C"] == 0.5 and fixed["selection"] == {} and -100 <= fixed["score"] <= 100


def test_row_names_add_parents_only_where_folder_names_clash():
    assert row_names(["/a/x/model", "/a/y/model", "/b/z"]) == ["x/model", "y/model", "b/z"]
    assert row_names(["/r/teacher", "/r/student"]) == ["teacher", "student"]


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
def test_data_every_paragraph_once_questions_point_at_their_own(shared_data):
    data = load_scorecard_data(shared_data, max_examples=30)
    with open(os.path.join(shared_data, "squad", "dev-v1.1.json"), encoding="utf-8") as f:
        squad = json.load(f)["data"]
    contexts = [p["context"] for a in squad for p in a["paragraphs"]]
    pairs = [(q["question"], p["context"]) for a in squad for p in a["paragraphs"] for q in p["qas"]]
    assert data.paragraphs == list(dict.fromkeys(contexts)) and len(data.paragraphs) == 199  # all, not only 30's
    assert [(q, data.paragraphs[r]) for q, r in zip(data.questions, data.relevant)] == pairs[:30]
    a, b, gold = data.sts
    assert len(a) == len(b) == len(gold) == 30 and len(data.mrpc[2]) == 30
    assert [len(p.train_labels) for p in data.probes] == [30, 30] and [p.name for p in data.probes] == ["SST-2", "CoLA"]


def test_probe_training_rows_are_a_seeded_sample_of_train(shared_data):
    first = load_scorecard_data(shared_data, probe_train_examples=100, seed=1)
    again = load_scorecard_data(shared_data, probe_train_examples=100, seed=1)
    other = load_scorecard_data(shared_data, probe_train_examples=100, seed=2)
    sst2 = first.probes[0]
    assert len(sst2.train_texts) == 100 and len(sst2.dev_texts) == 872  # dev is never sampled
    assert sst2.train_texts == again.probes[0].train_texts != other.probes[0].train_texts
    assert set(sst2.train_labels) == {0, 1}
    assert len(first.probes[1].dev_texts) == 1043 and len(first.sts[2]) == 1500 and len(first.mrpc[2]) == 1725


# --------------------------------------------------------------------------------------------------------------
# Whole scorecards
# --------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_static_dir(tiny_bert_dir, tmp_path_factory):
    from minilm.scripts.distill_static import main as distill_static

    out = str(tmp_path_factory.mktemp("static") / "static")
    distill_static(["--teacher_model", tiny_bert_dir, "--output_dir", out, "--pca_dims", "8"])
    return out


def test_scorecard_of_a_tiny_encoder_and_a_static_table(tiny_bert_dir, tiny_static_dir, shared_data, tmp_path):
    out = str(tmp_path / "card")
    card = eval_embeddings(["--model_dir", tiny_bert_dir, tiny_static_dir, "--names", "tiny", "static",
                            "--output_dir", out, "--data_dir", shared_data, "--max_examples", "60",
                            "--paragraph_max_seq_length", "128"])  # the tiny model has 128 positions
    with open(os.path.join(out, "scorecard.json"), encoding="utf-8") as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(card))
    assert [r["name"] for r in saved["models"]] == ["tiny", "static"]
    assert [r["kind"] for r in saved["models"]] == ["transformer", "static"]
    sts = read_sts(os.path.join(shared_data, "glue", "STS-B", "dev.tsv"))
    for row, folder in zip(saved["models"], (tiny_bert_dir, tiny_static_dir)):
        scores = row["scores"]
        assert all(math.isfinite(v) for v in scores.values())
        assert scores["average"] == pytest.approx(np.mean([scores[k] for k in AVERAGE_OF]))
        # the same STS-B number as eval_sts.py's own code path
        assert scores["sts_b_spearman"] == pytest.approx(folder_sts_spearman(folder, sts, max_examples=60)["spearman"],
                                                         abs=1e-6)
        assert 0 <= scores["mrpc_ap"] <= 100 and 0 <= scores["squad_mrr@10"] <= scores["squad_ndcg@10"] <= 100
        assert row["texts_encoded"]["paragraphs"] == 199 and row["probes"]["SST-2"]["train"] == 60
    assert saved["models"][1]["hidden_size"] == 8 and saved["models"][1]["normalize"] is True
    with open(os.path.join(out, "scorecard.md"), encoding="utf-8") as f:
        md = f.read()
    assert md.startswith("| model | kind | params (M) | STS-B | MRPC AP | SQuAD NDCG@10 |")
    assert "| `tiny` | transformer |" in md and "| `static` | static |" in md
    assert f"{saved['models'][0]['scores']['average']:.2f}" in md
