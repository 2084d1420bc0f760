"""distill_static.py on a tiny random teacher (2 x 32, the real uncased vocabulary): each row is the teacher's output
for its token, the weights and PCA are the documented formulas, the folder reloads, and a sentence embeds as the
normalised mean of its (non-special) tokens' rows."""
import json
import os

import numpy as np
import pytest
import torch

from kdcore.errors import UserError
from kdcore.sentence_embeddings import encode, load_embedding_folder
from kdcore.static_token_embedding import StaticTokenEmbedding, is_static_folder, load_static_folder
from minilm.scripts.distill_static import main as distill_static
from minilm.static_embedding import context_ids, pca_reduce, skipped_token_ids, zipf_weights


def test_zipf_weights_by_hand():
    # ranks 1..3: p ~ 1/2, 1/3, 1/4, normalised by 13/12 -> 6/13, 4/13, 3/13
    a = 1e-4
    p = np.array([6, 4, 3]) / 13
    assert zipf_weights(3, "sif", a) == pytest.approx(a / (a + p))
    assert zipf_weights(3, "log") == pytest.approx([np.log(2), np.log(3), np.log(4)])
    assert zipf_weights(3, "none") == pytest.approx([1, 1, 1])
    w = zipf_weights(1000, "sif")
    assert np.all(np.diff(w) > 0)  # rarer (later) tokens weigh more


def test_pca_by_hand():
    # variance 2/3 along x, 1/6 along y: one component keeps x (up to sign) and explains (2/3) / (2/3 + 1/6) = 0.8
    x = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.5], [0.0, -0.5]])
    reduced, explained = pca_reduce(x, 1)
    assert np.abs(reduced[:, 0]) == pytest.approx([1, 1, 0, 0], abs=1e-9)
    assert explained == pytest.approx(0.8)


def test_special_and_unused_tokens_are_skipped(bert_tokenizer):
    skipped = skipped_token_ids(bert_tokenizer)
    assert {0, 100, 101, 102, 103} <= skipped and 1 in skipped  # [PAD] [UNK] [CLS] [SEP] [MASK], [unused0]
    assert len(skipped) == 5 + 994 and bert_tokenizer.convert_tokens_to_ids("the") not in skipped
    assert context_ids(bert_tokenizer, "sep_cls") == ([102], [101])
    assert context_ids(bert_tokenizer, "cls_sep") == ([101], [102])
    assert context_ids(bert_tokenizer, "alone") == ([], [])


def _teacher_output(teacher_dir, ids):
    from transformers import AutoModel

    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    inp = torch.tensor([ids])
    with torch.no_grad():
        hidden = teacher(input_ids=inp, attention_mask=torch.ones_like(inp), token_type_ids=torch.zeros_like(inp))
    return hidden.last_hidden_state.mean(1)[0].numpy()  # the tiny teacher is a plain HF folder: mean pooling


@pytest.fixture(scope="module")
def plain_and_sif(tiny_bert_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    plain, sif = str(root / "plain"), str(root / "sif")
    result = distill_static(["--teacher_model", tiny_bert_dir, "--output_dir", plain, "--pca_dims", "0",
                             "--weighting", "none"])
    distill_static(["--teacher_model", tiny_bert_dir, "--output_dir", sif, "--pca_dims", "0"])
    return plain, sif, result


def test_each_row_is_the_teachers_output_for_its_token(plain_and_sif, tiny_bert_dir, bert_tokenizer):
    plain, sif, result = plain_and_sif
    model, tokenizer, config = load_static_folder(plain)
    table = model.embeddings.weight.numpy()
    assert table.shape == (len(bert_tokenizer), 32) and result["hidden_size"] == 32
    for token in ("the", "cat", "##ing"):
        i = bert_tokenizer.convert_tokens_to_ids(token)
        assert table[i] == pytest.approx(_teacher_output(tiny_bert_dir, [102, i, 101]), abs=1e-5)
    skipped = sorted(skipped_token_ids(bert_tokenizer))
    assert not table[skipped].any() and not model.pooled[skipped].any()
    assert int(model.pooled.sum()) == config["pooled_tokens"] == len(bert_tokenizer) - len(skipped)
    # sif: row of the token of rank r (vocabulary order, skipped tokens left out) = plain row * w_r
    weighted = load_static_folder(sif)[0].embeddings.weight.numpy()
    kept = [i for i in range(len(bert_tokenizer)) if i not in set(skipped)]
    w = zipf_weights(len(kept), "sif", 1e-4)
    for i in (kept[0], bert_tokenizer.convert_tokens_to_ids("the"), kept[-1]):
        assert weighted[i] == pytest.approx(table[i] * w[kept.index(i)], rel=1e-5, abs=1e-7)


def test_a_sentence_is_the_normalised_mean_of_its_tokens(plain_and_sif, bert_tokenizer):
    plain, _, _ = plain_and_sif
    model, tokenizer, mode, normalize = load_embedding_folder(plain)
    assert isinstance(model, StaticTokenEmbedding) and (mode, normalize) == ("mean", True)
    table = model.embeddings.weight.numpy()
    got = encode(model, tokenizer, ["The cat", "cat"], mode, normalize)
    ids = bert_tokenizer.convert_tokens_to_ids(["the", "cat"])
    want = table[ids].mean(0)
    assert got[0] == pytest.approx(want / np.linalg.norm(want), abs=1e-6)  # [CLS] / [SEP] left out of the mean
    assert got[1] == pytest.approx(table[ids[1]] / np.linalg.norm(table[ids[1]]), abs=1e-6)


def test_pca_dims_and_the_folder_format(tiny_bert_dir, tmp_path):
    out = str(tmp_path / "static8")
    os.makedirs(out)
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("kept")
    distill_static(["--teacher_model", tiny_bert_dir, "--output_dir", out, "--pca_dims", "8",
                    "--token_context", "alone", "--weighting", "log"])
    assert is_static_folder(out) and not is_static_folder(tiny_bert_dir)
    assert open(os.path.join(out, "notes.txt")).read() == "kept"  # other files in the folder are left alone
    with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    assert (config["model_type"], config["hidden_size"], config["pca_dims"]) == ("static_embedding", 8, 8)
    assert (config["token_context"], config["weighting"]) == ("alone", "log")
    assert 0 < config["pca_explained_variance_ratio"] <= 1
    from safetensors.numpy import load_file

    tensors = load_file(os.path.join(out, "static_embeddings.safetensors"))
    assert set(tensors) == {"embeddings", "pooled"} and tensors["embeddings"].dtype == np.float32
    assert "static_embedding" in open(os.path.join(out, "README.md"), encoding="utf-8").read()


def test_a_damaged_table_is_one_clear_error(tiny_bert_dir, tmp_path):
    from safetensors.numpy import save_file

    out = str(tmp_path / "s")
    distill_static(["--teacher_model", tiny_bert_dir, "--output_dir", out, "--pca_dims", "4"])
    weights = os.path.join(out, "static_embeddings.safetensors")
    tensors = load_file_np(weights)
    tensors["embeddings"][5, 0] = np.nan
    save_file(tensors, weights)
    with pytest.raises(UserError, match="finite"):
        load_static_folder(out)
    save_file({"embeddings": tensors["embeddings"][:10], "pooled": tensors["pooled"][:10]}, weights)
    with pytest.raises(UserError, match="expected 'embeddings'"):
        load_static_folder(out)


def load_file_np(path):
    from safetensors.numpy import load_file

    return {k: v.copy() for k, v in load_file(path).items()}
