import json
import os

import pytest
import torch
from transformers import AutoModel, BertConfig, RobertaConfig, XLMRobertaConfig

from kdcore.cli import UserError
from kdcore.attention_capture import SelfAttentionCapture, attention_probs
from kdcore.modeling import build_student, load_teacher, save_model


def _tiny(config_cls, **kw):
    base = dict(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=64)
    base.update(kw)
    return config_cls(**base)


def _padded_batch(vocab, pad_id, lengths=(9, 5, 1), seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(5, vocab, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
        ids[i, n:] = pad_id
    return ids, mask


@pytest.mark.parametrize("config_cls,extra", [
    (BertConfig, {}),
    (RobertaConfig, {"pad_token_id": 1, "type_vocab_size": 1, "max_position_embeddings": 70}),
    (XLMRobertaConfig, {"pad_token_id": 1, "type_vocab_size": 1, "max_position_embeddings": 70}),
])
def test_probs_from_captured_qk_equal_eager_attention(config_cls, extra):
    torch.manual_seed(0)
    config = _tiny(config_cls, **extra)
    sdpa = AutoModel.from_config(config, attn_implementation="sdpa").eval()
    eager = AutoModel.from_config(config, attn_implementation="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    ids, mask = _padded_batch(config.vocab_size, config.pad_token_id or 0)
    layers = [0, 2]
    with torch.no_grad(), SelfAttentionCapture(sdpa, layers, parts=("query", "key")) as cap:
        out_sdpa = sdpa(input_ids=ids, attention_mask=mask)
    with torch.no_grad():
        out_eager = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    # SDPA was kept: same outputs as eager, and the capture did not change them.
    torch.testing.assert_close(out_sdpa.last_hidden_state, out_eager.last_hidden_state, atol=1e-5, rtol=1e-5)
    for layer in layers:
        probs = attention_probs(cap[layer].query, cap[layer].key, mask)
        want = out_eager.attentions[layer]
        real = mask.bool()[:, None, :, None].expand_as(want)  # real query rows (padded rows are unused)
        assert (probs[real] - want[real]).abs().max().item() < 1e-6
        # padded keys (example 1 has 5 real tokens of 9) get exactly zero probability
        assert probs[1][:, :, 5:].abs().max().item() == 0.0


def test_capture_keeps_gradients_and_removes_hooks():
    model = AutoModel.from_config(_tiny(BertConfig)).train()
    ids, mask = _padded_batch(97, 0)
    with SelfAttentionCapture(model, [-1], parts=("value",)) as cap:
        model(input_ids=ids, attention_mask=mask)
    v = cap[-1].value
    assert v.shape == (3, 4, 9, 8) and v.requires_grad
    v.sum().backward()
    assert model.encoder.layer[2].attention.self.value.weight.grad is not None
    assert all(len(m._forward_hooks) == 0 for m in model.modules())


def test_build_student_follows_teacher_and_saves_loadable_folder(tmp_path, bert_tokenizer, packaged_teacher):
    teacher = load_teacher(packaged_teacher)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student = build_student("configs/tiny_student_2L_64D.json", teacher.config, bert_tokenizer)
    assert student.config.vocab_size == teacher.config.vocab_size == len(bert_tokenizer)
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 64
    fit = torch.nn.Linear(64, 384)
    save_model(student, str(tmp_path / "student"), bert_tokenizer, extra_modules={"fit_dense": fit})
    files = set(os.listdir(tmp_path / "student"))
    assert {"config.json", "model.safetensors", "fit_dense.safetensors"} <= files
    reloaded, info = AutoModel.from_pretrained(tmp_path / "student", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    for (k, a), (_, b) in zip(student.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), k
    # no temporary folders left behind
    assert sorted(os.listdir(tmp_path)) == ["student"]


def test_model_card_describes_only_folders_of_its_own_run(tmp_path, bert_tokenizer):
    """A run's record never leaks into a folder outside its --output_dir (e.g. another test's save)."""
    from transformers import BertConfig, BertModel

    from kdcore.cli import ArgumentParser, parse_args
    from kdcore.model_card import read_front_matter

    parser = ArgumentParser(script="test_modeling.py")
    parser.add_argument("--teacher_model", identifies=True)
    parser.add_argument("--output_dir", identifies=False)
    parse_args(parser, ["--teacher_model", "T", "--output_dir", str(tmp_path / "run")])
    model = BertModel(BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64))
    save_model(model, str(tmp_path / "run" / "checkpoint-1"), bert_tokenizer)
    save_model(model, str(tmp_path / "elsewhere"), bert_tokenizer)
    inside = json.load(open(tmp_path / "run" / "checkpoint-1" / "training_args.json"))
    outside = json.load(open(tmp_path / "elsewhere" / "training_args.json"))
    assert inside["args"]["teacher_model"] == "T" and inside["script"] == "test_modeling.py"
    assert read_front_matter(tmp_path / "run" / "checkpoint-1")["base_model"] == "T"
    assert "args" not in outside and "outside a recorded run" in outside["note"]
    assert "base_model" not in read_front_matter(tmp_path / "elsewhere")
    reloaded, info = AutoModel.from_pretrained(tmp_path / "elsewhere", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_bad_configs_are_user_errors(tmp_path, bert_tokenizer, packaged_teacher):
    teacher = load_teacher(packaged_teacher)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"hidden_size": 100, "num_attention_heads": 12, "num_hidden_layers": 2}))
    with pytest.raises(UserError, match="not divisible"):
        build_student(str(bad), teacher.config, bert_tokenizer)
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4, "vocab_size": 1000}))
    with pytest.raises(UserError, match="vocab"):
        build_student(str(vocab), teacher.config, bert_tokenizer)
    with pytest.raises(UserError, match="no such"):
        load_teacher(str(tmp_path / "nope"))


def test_bare_weights_file_with_config_name(tmp_path, tiny_bert_dir):
    from safetensors.torch import load_file
    import shutil

    # The seed READMEs' style: a weights file whose keys carry the "bert." prefix, plus --config_name.
    state = {"bert." + k: v for k, v in load_file(os.path.join(tiny_bert_dir, "model.safetensors")).items()}
    torch.save(state, tmp_path / "weights.bin")
    shutil.copy(os.path.join(tiny_bert_dir, "config.json"), tmp_path / "config.json")
    model = load_teacher(str(tmp_path / "weights.bin"), config_name=str(tmp_path / "config.json"))
    ref = AutoModel.from_pretrained(tiny_bert_dir)
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_tokenizer_from_bare_vocab_file(packaged_teacher):
    from kdcore.modeling import load_tokenizer

    tok = load_tokenizer(os.path.join(packaged_teacher, "vocab.txt"), do_lower_case=True)
    assert len(tok) == 30522
    assert tok.tokenize("Hello World") == ["hello", "world"]


def test_attention_scores_stay_fp32_under_autocast():
    from kdcore.attention_capture import attention_scores

    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 5, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = attention_scores(q, k)
    assert s.dtype == torch.float32
    torch.testing.assert_close(s, q @ k.transpose(-1, -2) / 8 ** 0.5)
