"""The task-distillation recipe's parts: the Hinton loss against its formula, the held-out selection split, the
identity fit_dense of a teacher-layer start, BERT masking, and fitting a masked-LM head onto a head-less encoder."""
import json
import math
import os

import pytest
import torch

from tinybert.losses import hinton_kd_loss, soft_cross_entropy


def test_hinton_loss_equals_its_formula_computed_by_hand():
    torch.manual_seed(0)
    s, t = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 2, 1, 1, 0])
    T, alpha = 3.0, 0.3
    total = 0.0
    for b in range(5):
        ps = [math.exp(v / T) for v in s[b].tolist()]
        pt = [math.exp(v / T) for v in t[b].tolist()]
        ps = [p / sum(ps) for p in ps]
        pt = [p / sum(pt) for p in pt]
        kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
        ce = -math.log(math.exp(s[b, y[b]].item()) / sum(math.exp(v) for v in s[b].tolist()))
        total += alpha * ce + (1 - alpha) * T * T * kl
    assert hinton_kd_loss(s, t, y, T, alpha).item() == pytest.approx(total / 5, rel=1e-5)


def test_hinton_loss_without_gold_has_the_soft_cross_entropy_gradient_times_t_squared():
    torch.manual_seed(1)
    t = torch.randn(4, 2)
    y = torch.tensor([0, 1, 1, 0])
    s1 = torch.randn(4, 2, requires_grad=True)
    s2 = s1.detach().clone().requires_grad_(True)
    hinton_kd_loss(s1, t, y, 2.0, 0.0).backward()
    (4.0 * soft_cross_entropy(s2, t, 2.0)).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-6)
    # and with alpha = 1 it is the gold cross-entropy alone
    s3 = s1.detach()
    assert hinton_kd_loss(s3, t, y, 2.0, 1.0).item() == pytest.approx(torch.nn.functional.cross_entropy(s3, y).item())


def test_heldout_split_is_a_fixed_partition_of_train(tmp_path, shared_data):
    from kdcore.cli import UserError
    from tinybert.glue import get_task, read_examples, write_heldout_split

    task = get_task("SST-2")
    sst2 = os.path.join(shared_data, "glue", "SST-2")
    info = write_heldout_split(sst2, task, str(tmp_path / "a"), 0.1, seed=0)
    train = read_examples(task, str(tmp_path / "a" / "train.tsv"), "train")
    held = read_examples(task, str(tmp_path / "a" / "dev.tsv"), "dev")
    full = read_examples(task, os.path.join(sst2, "train.tsv"), "train")
    assert (len(train), len(held)) == (info["train_rows"], info["heldout_rows"]) == (len(full) - 692, 692)
    key = lambda e: (e.text_a, e.label)  # noqa: E731
    assert sorted(map(key, train + held)) == sorted(map(key, full))
    assert {e.label for e in held} == {"0", "1"}
    # the same split again is reused; another seed into the same folder is refused, never overwritten
    before = (tmp_path / "a" / "dev.tsv").read_bytes()
    write_heldout_split(sst2, task, str(tmp_path / "a"), 0.1, seed=0)
    with pytest.raises(UserError, match="exists with another split"):
        write_heldout_split(sst2, task, str(tmp_path / "a"), 0.1, seed=1)
    assert (tmp_path / "a" / "dev.tsv").read_bytes() == before
    write_heldout_split(sst2, task, str(tmp_path / "b"), 0.1, seed=1)
    assert (tmp_path / "b" / "dev.tsv").read_bytes() != before


def test_fit_dense_starts_as_identity_only_for_a_same_width_teacher_layer_start():
    from transformers import BertConfig

    from tinybert.intermediate import build_fit_dense

    teacher = BertConfig(hidden_size=32)
    same = BertConfig(hidden_size=32)
    same.student_init = {"from": "t", "layers": [2]}
    assert torch.equal(build_fit_dense(same, teacher).weight, torch.eye(32))
    random_start = BertConfig(hidden_size=32)
    w = build_fit_dense(random_start, teacher).weight
    assert not torch.equal(w, torch.eye(32)) and w.std().item() == pytest.approx(0.02, rel=0.2)


def test_bert_masking_rates_and_specials():
    from tinybert.mlm_head import IGNORE, mask_tokens

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (200_000,))
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[::50] = True
    masked, labels = mask_tokens(ids, special, 30522, 103, g)
    chosen = labels != IGNORE
    assert not chosen[special].any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert chosen.float().mean().item() == pytest.approx(0.15 * 0.98, abs=0.005)
    became_mask = (masked[chosen] == 103).float().mean().item()
    kept = (masked[chosen] == ids[chosen]).float().mean().item()
    assert became_mask == pytest.approx(0.8, abs=0.01) and kept == pytest.approx(0.1, abs=0.01)
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_fit_mlm_head_trains_only_the_head_and_its_output_feeds_augmentation(tmp_path, shared_data, tiny_bert_dir,
                                                                             bert_tokenizer):
    import argparse

    from safetensors.torch import load_file
    from transformers import AutoModel, AutoModelForMaskedLM

    from tinybert.scripts import fit_mlm_head
    from tinybert.augmentation import load_masked_lm
    from tinybert.packed_sequences import pregenerate_packed

    corpus = tmp_path / "corpus.txt"
    with open(os.path.join(shared_data, "corpus", "austen.txt"), encoding="utf-8") as f:
        corpus.write_text("".join(line for _, line in zip(range(3000), f)), encoding="utf-8")
    packed = tmp_path / "packed"
    pregenerate_packed(argparse.Namespace(max_seq_len=64, train_corpus=str(corpus), output_dir=str(packed),
                                          corpus_format="auto", max_documents=None), bert_tokenizer)
    out = tmp_path / "mlm"
    fit_mlm_head.main(["--teacher_model", tiny_bert_dir, "--pregenerated_data", str(packed), "--output_dir", str(out),
                       "--max_steps", "60", "--train_batch_size", "16", "--learning_rate", "1e-2",
                       "--heldout_blocks", "20", "--logging_steps", "10"])
    res = json.load(open(out / "eval_results.json"))
    # a frozen random encoder still lets the head learn which words are frequent: far above its random start
    assert res["heldout_mlm_accuracy"] > res["heldout_mlm_accuracy_before"] + 0.03
    assert res["heldout_masked_tokens"] > 100
    # the encoder is the teacher's, bit for bit; the head is new and data_augmentation.py accepts it
    teacher = load_file(os.path.join(tiny_bert_dir, "model.safetensors"))
    fitted = load_file(out / "model.safetensors")
    assert any(k.startswith("cls.predictions.transform") for k in fitted)
    model = load_masked_lm(str(out), device="cpu")
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    AutoModelForMaskedLM.from_pretrained(str(out))
    _, info = AutoModel.from_pretrained(str(out), output_loading_info=True)  # the teacher's encoder, pooler included
    assert info["missing_keys"] == set() or not info["missing_keys"]
    for name, tensor in teacher.items():
        assert torch.equal(fitted["bert." + name], tensor), name
