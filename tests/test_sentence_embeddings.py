"""Sentence-embedding students: pooling, the embedding loss, STS zero-shot Spearman, sentence-transformers folders."""
import json
import os

import numpy as np
import pytest
import torch
from conftest import REPO

from kdcore.cli import UserError
from kdcore.sentence_embeddings import embedding_mse, pool, read_pooling, read_sts, spearman

L3 = os.path.join(REPO, "configs", "minilm_L3xH384.json")


def test_pooling_modes_against_loops():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    for b, n in enumerate([3, 5]):
        real = h[b, :n]
        assert torch.allclose(pool(h, mask, "mean")[b], real.mean(0), atol=1e-6)
        assert torch.allclose(pool(h, mask, "mean_sqrt_len")[b], real.sum(0) / n ** 0.5, atol=1e-6)
        assert torch.equal(pool(h, mask, "max")[b], real.max(0).values)
        assert torch.equal(pool(h, mask, "cls")[b], h[b, 0])


def test_embedding_mse_is_the_mean_squared_difference():
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    assert embedding_mse(a, b).item() == pytest.approx(float(((a - b) ** 2).sum() / 24), rel=1e-6)
    with pytest.raises(ValueError, match="teacher's width"):
        embedding_mse(torch.randn(4, 6), torch.randn(4, 8))


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 5, 50).astype(float), rng.normal(size=50)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).correlation, abs=1e-12)


def test_read_sts_errors_name_the_line(tmp_path):
    bad = tmp_path / "dev.tsv"
    bad.write_text("index\tsentence1\tsentence2\tscore\n0\ta\tb\t1.0\n1\tc\td\thigh\n")
    with pytest.raises(UserError, match=r"dev.tsv:3: .*numeric score"):
        read_sts(str(bad))


def test_distilled_student_is_a_sentence_transformers_folder(tmp_path, packaged_teacher, shared_data):
    """distill_embeddings.py from the real teacher: the output loads with SentenceTransformer, with the teacher's
    pooling and normalisation, and its embeddings equal the toolkit's own pooled ones; the STS numbers are the
    Spearman of cosine vs gold."""
    from minilm.scripts import distill_embeddings
    from sentence_transformers import SentenceTransformer

    from kdcore.modeling import load_model, load_tokenizer
    from kdcore.sentence_embeddings import encode

    out = tmp_path / "emb"
    sts = os.path.join(shared_data, "glue", "STS-B", "dev.tsv")
    res = distill_embeddings.main(["--teacher_model", packaged_teacher, "--student_model", L3, "--student_init",
                                   "teacher_layers", "--train_text", os.path.join(shared_data, "corpus", "brown.txt"),
                                   "--max_train_examples", "24", "--train_batch_size", "8", "--max_steps", "2",
                                   "--max_seq_length", "24", "--output_dir", str(out), "--sts_file", sts,
                                   "--max_sts_examples", "40", "--relation_weight", "1.0", "--logging_steps", "1"])
    log = [json.loads(line) for line in open(out / "train_log.jsonl")]
    assert {"embedding", "qq", "kk", "vv"} <= set(log[0])
    assert log[0]["loss"] == pytest.approx(log[0]["embedding"] + log[0]["qq"] + log[0]["kk"] + log[0]["vv"], rel=1e-4)
    assert read_pooling(str(out)) == read_pooling(packaged_teacher) == ("mean", True)
    assert json.load(open(out / "config.json"))["student_init"]["layers"] == [2, 4, 6]
    st = SentenceTransformer(str(out), device="cpu")
    sentences = ["A man is playing a guitar.", "Two dogs run on the beach together."]
    ours = encode(load_model(str(out)), load_tokenizer(str(out)), sentences, "mean", True)
    theirs = st.encode(sentences, convert_to_numpy=True)
    assert np.allclose(ours, theirs, atol=1e-5)
    assert np.allclose(np.linalg.norm(theirs, axis=-1), 1.0, atol=1e-5)
    # the reported Spearman is the rank correlation of the cosines with the gold scores
    from scipy.stats import spearmanr

    a, b, gold = read_sts(sts)
    ea, eb = st.encode(a[:40]), st.encode(b[:40])
    expected = 100 * spearmanr((ea * eb).sum(-1), gold[:40]).correlation
    assert res["sts_spearman"] == pytest.approx(expected, abs=1e-3)


def test_eval_sts_script_and_width_error(tmp_path, packaged_teacher, shared_data, capsys):
    from minilm.scripts import eval_sts

    from minilm.embedding import EmbeddingDistillObjective

    sts = os.path.join(shared_data, "glue", "STS-B", "dev.tsv")
    res = eval_sts.main(["--model_dir", packaged_teacher, "--sts_file", sts, "--max_examples", "60",
                         "--output_file", str(tmp_path / "r.json")])
    assert json.load(open(tmp_path / "r.json"))["spearman"] == pytest.approx(res["spearman"])
    assert 50 < res["spearman"] <= 100  # the real teacher is a good sentence encoder
    from transformers import BertConfig, BertModel

    small = BertModel(BertConfig(vocab_size=99, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=32))
    big = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64))
    with pytest.raises(UserError, match="needs the teacher's hidden size 32"):
        EmbeddingDistillObjective(big, small)


def test_embedding_recipe_parses_with_the_script_arguments(tmp_path):
    """configs/recipes/minilmv2_embedding_demo.yaml goes through distill_embeddings.py's own parser (types, ranges,
    choices) and describes the comparison's row: relations on, the demo's student and start."""
    from kdcore.cli import parse_args
    from minilm.scripts.distill_embeddings import build_parser

    recipe = os.path.join(REPO, "configs", "recipes", "minilmv2_embedding_demo.yaml")
    args = parse_args(build_parser(), ["--config", recipe, "--teacher_model", "t", "--train_text", "x.txt",
                                       "--output_dir", str(tmp_path / "out")])
    assert args.relation_weight > 0 and args.student_init == "teacher_layers" and args.init_layers == "2,4,6"
    assert os.path.isfile(os.path.join(REPO, args.student_model)) and 0 < args.learning_rate < 1e-2
