"""Teachers of every family in kdcore.families' table (DeBERTa-v2/v3, DistilBERT, ModernBERT) through MiniLMv2:
the loss against the slow reference loop on Q/K/V recomputed from the layer input, a few general-distillation
steps from a saved tiny random teacher, and the student reloaded with AutoModel."""
import json
import os
import sys

import pytest
import torch
from transformers import AutoModel, DebertaV2Config, DistilBertConfig, ModernBertConfig, XLMRobertaXLConfig

from conftest import REPO
from kdcore.attention_capture import SelfAttentionCapture
from kdcore.cli import UserError
from kdcore.families import family_of, get_path
from kdcore.modeling import build_student
from minilm.v1 import MiniLMv1Objective
from minilm.v2 import MiniLMv2Objective
from pregenerated_writer import real_paragraphs, write_pregenerated
from test_minilm_losses import slow_relation_kl
from tinybert.intermediate import TinyBertIntermediateObjective

sys.path.insert(0, REPO)
from pipelines.scripts import general_distill  # noqa: E402

SIZE = dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=4, intermediate_size=96)


def _config(family, vocab_size=120):
    if family == "deberta-v2":  # DeBERTa-v3's attention: relative positions only, shared attention keys
        return DebertaV2Config(vocab_size=vocab_size, max_position_embeddings=64, relative_attention=True,
                               position_buckets=8, pos_att_type=["p2c", "c2p"], share_att_key=True,
                               position_biased_input=False, type_vocab_size=0, **SIZE)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab_size, dim=48, n_layers=4, n_heads=4, hidden_dim=96,
                                max_position_embeddings=64)
    return ModernBertConfig(vocab_size=vocab_size, max_position_embeddings=64, pad_token_id=0, bos_token_id=1,
                            eos_token_id=2, cls_token_id=1, sep_token_id=2, **SIZE)


FAMILIES = ["deberta-v2", "distilbert", "modernbert"]


def _teacher(family, vocab_size=120):
    torch.manual_seed(0)
    return AutoModel.from_config(_config(family, vocab_size)).eval()


def _student(tmp_path, teacher):
    path = tmp_path / "student.json"  # BERT field names, as in configs/*.json
    path.write_text(json.dumps({"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
                                "intermediate_size": 40}))
    torch.manual_seed(1)
    return build_student(str(path), teacher.config)


def _qkv_from_layer_input(model, layer, ids, mask):
    """Q, K, V (B, T, D) of `layer` recomputed from its input hidden state with the family's own projections."""
    family = family_of(model.config)
    block = get_path(model, family.layers)[layer]
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
        if family.name == "modernbert":  # pre-norm block: the fused projection reads attn_norm(h)
            return get_path(block, family.qkv)(block.attn_norm(h)).chunk(3, dim=-1)
        return tuple(get_path(block, path)(h) for path in family.qkv)


@pytest.mark.parametrize("family", ["bert", *FAMILIES])
def test_capture_run_stops_after_the_projections_and_records_the_same_values(family):
    if family == "bert":
        from transformers import BertConfig

        torch.manual_seed(0)
        model = AutoModel.from_config(BertConfig(vocab_size=120, max_position_embeddings=64, **SIZE)).eval()
    else:
        model = _teacher(family)
    blocks = get_path(model, family_of(model.config).layers)
    ids = torch.randint(3, 120, (2, 7), generator=torch.Generator().manual_seed(4))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    with torch.no_grad():
        with SelfAttentionCapture(model, [1]) as full:
            model(input_ids=ids, attention_mask=mask)
        later_calls = []  # the next layer must never run
        handle = blocks[2].register_forward_pre_hook(lambda *_: later_calls.append(1))
        with SelfAttentionCapture(model, [1]) as early:
            early.run(input_ids=ids, attention_mask=mask)
        handle.remove()
    assert later_calls == []
    for part in ("query", "key", "value"):
        assert torch.equal(getattr(early[1], part), getattr(full[1], part)), part


@pytest.mark.parametrize("family", FAMILIES)
def test_minilmv2_loss_matches_slow_reference(tmp_path, family):
    teacher = _teacher(family)
    student = _student(tmp_path, teacher)
    assert family_of(student.config).name == family and len(get_path(student, family_of(student.config).layers)) == 2
    if family == "distilbert":  # the size fields reach DistilBERT's own names
        assert (student.config.dim, student.config.hidden_dim, student.config.n_heads) == (24, 40, 2)
    g = torch.Generator().manual_seed(3)
    lengths = (9, 5, 7)
    ids = torch.randint(3, 120, (3, 9), generator=g)
    mask = (torch.arange(9)[None] < torch.tensor(lengths)[:, None]).long()
    ids = ids * mask
    reference_teacher = _teacher(family)  # same seed: identical weights, never touched by the objective
    objective = MiniLMv2Objective(teacher, student, teacher_layer=3, num_relation_heads=4).eval()
    with torch.no_grad():
        out = objective(input_ids=ids, attention_mask=mask)
    t_qkv = _qkv_from_layer_input(reference_teacher, 2, ids, mask)
    s_qkv = _qkv_from_layer_input(student, 1, ids, mask)
    for name, t, s in zip(("qq", "kk", "vv"), t_qkv, s_qkv):
        assert out[name].item() == pytest.approx(slow_relation_kl(t, s, lengths, 4), rel=1e-4), name

    # every trainable parameter gets a gradient (no DDP find_unused_parameters needed), the teacher none
    objective.train()
    objective(input_ids=ids, attention_mask=mask)["loss"].backward()
    trainable = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    assert [n for n, p in trainable if p.grad is None] == []
    assert all(p.grad is None for p in teacher.parameters())


def test_distilbert_attention_kl_equals_kl_of_its_eager_attention_probabilities(tmp_path):
    """DistilBERT's attention is softmax(QK^T/sqrt(d)) of its q_lin/k_lin outputs, so MiniLM v1 (and TinyBERT)
    accept it: the attention term equals the KL of the probabilities the model itself reports."""
    teacher = _teacher("distilbert")
    student = _student(tmp_path, teacher)
    student.config.n_heads = 4  # MiniLM v1 needs the teacher's head count: rebuild with 4 heads
    torch.manual_seed(1)
    student = AutoModel.from_config(student.config)
    lengths = (9, 5, 7)
    ids = torch.randint(3, 120, (3, 9), generator=torch.Generator().manual_seed(3))
    mask = (torch.arange(9)[None] < torch.tensor(lengths)[:, None]).long()
    eager = {}
    for name, model in (("t", _teacher("distilbert")), ("s", student)):
        copy = AutoModel.from_config(model.config, attn_implementation="eager").eval()
        copy.load_state_dict(model.state_dict())
        with torch.no_grad():
            eager[name] = copy(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1].double()
    objective = MiniLMv1Objective(teacher, student).eval()
    with torch.no_grad():
        out = objective(input_ids=ids, attention_mask=mask)
    want = 0.0
    for b, n in enumerate(lengths):
        pt, ps = eager["t"][b, :, :n, :n], eager["s"][b, :, :n, :n]
        want += float((pt * (pt.log() - ps.log())).sum())
    assert out["attention"].item() == pytest.approx(want / (4 * sum(lengths)), rel=1e-4)
    TinyBertIntermediateObjective(_teacher("distilbert"), student)  # accepted too (4 layers onto 2)


@pytest.mark.parametrize("family", ["deberta-v2", "modernbert"])
def test_methods_that_need_attention_scores_refuse_in_one_line(tmp_path, family):
    teacher = _teacher(family)
    student = _student(tmp_path, teacher)
    with pytest.raises(UserError, match="--distill_method minilm needs the attention scores .* use --distill_method "
                                        "minilmv2"):
        MiniLMv1Objective(teacher, student)
    with pytest.raises(UserError, match="--distill_method tinybert needs the attention scores"):
        TinyBertIntermediateObjective(teacher, student)


@pytest.fixture(scope="module")
def wiki_data(tmp_path_factory, bert_tokenizer, shared_data):
    return write_pregenerated(tmp_path_factory.mktemp("wiki_pregen"), bert_tokenizer, real_paragraphs(shared_data, 16),
                              max_seq_len=24)


@pytest.mark.parametrize("family", FAMILIES)
def test_general_distillation_steps_and_automodel_reload(tmp_path, family, bert_tokenizer, wiki_data):
    teacher_dir, out = str(tmp_path / "teacher"), str(tmp_path / "out")
    _teacher(family, vocab_size=len(bert_tokenizer)).save_pretrained(teacher_dir)
    bert_tokenizer.save_pretrained(teacher_dir)  # the data was pregenerated with this vocabulary
    student_config = tmp_path / "student.json"
    student_config.write_text(json.dumps({"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2,
                                          "intermediate_size": 40}))
    result = general_distill.main([
        "--pregenerated_data", wiki_data, "--teacher_model", teacher_dir, "--student_model", str(student_config),
        "--distill_method", "minilmv2", "--num_relation_heads", "4", "--output_dir", out, "--train_batch_size", "4",
        "--max_steps", "3", "--learning_rate", "1e-3", "--warmup_proportion", "0", "--logging_steps", "1",
        "--eval_step", "0"])
    assert result.global_step == 3
    with open(os.path.join(out, "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 3 and all(r["qq"] > 0 and r["kk"] > 0 and r["vv"] > 0 for r in records)
    model, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert family_of(model.config).name == family and model.config.hidden_size == 24


def test_family_table_rules():
    from transformers import BertConfig, RobertaConfig

    from kdcore.families import max_input_positions, set_size_field, uses_token_type_ids

    roberta = RobertaConfig(max_position_embeddings=514, pad_token_id=1, type_vocab_size=1)
    assert max_input_positions(roberta) == 512 and not uses_token_type_ids(roberta)  # positions start at pad + 1
    bert = BertConfig(max_position_embeddings=512)
    assert max_input_positions(bert) == 512 and uses_token_type_ids(bert)
    assert not uses_token_type_ids(_config("distilbert")) and not uses_token_type_ids(_config("modernbert"))
    assert not uses_token_type_ids(_config("deberta-v2"))  # DeBERTa-v3: type_vocab_size 0
    # a deeper ModernBERT student continues the teacher's pattern: global attention every third layer
    teacher = _config("modernbert")
    assert teacher.layer_types == ["full_attention", "sliding_attention", "sliding_attention", "full_attention"]
    set_size_field(teacher, "num_hidden_layers", 7)
    assert teacher.num_hidden_layers == 7
    assert teacher.layer_types == (["full_attention"] + 2 * ["sliding_attention"]) * 2 + ["full_attention"]
    with pytest.raises(UserError, match="model_type 'gpt2' is not a supported encoder family"):
        family_of(type("C", (), {"model_type": "gpt2"})())


# ---- two gloo processes: students whose losses leave parameters without a gradient still train under DDP ----
DDP_CASES = {
    # family / config: (teacher config, method, student layers, what gets no gradient)
    "xlm-roberta-xl": (lambda v: XLMRobertaXLConfig(
        vocab_size=v, max_position_embeddings=70, pad_token_id=1, **SIZE), "minilm", 2, "the last LayerNorms"),
    "deberta-v2 unshared keys, 1 layer": (lambda v: DebertaV2Config(
        vocab_size=v, max_position_embeddings=64, relative_attention=True, position_buckets=8,
        pos_att_type=["p2c", "c2p"], share_att_key=False, position_biased_input=False, type_vocab_size=0, **SIZE),
        "minilmv2", 1, "pos_key_proj, pos_query_proj, rel_embeddings"),
    "distilbert": (lambda v: _config("distilbert", v), "minilmv2", 2, "nothing"),
    "modernbert": (lambda v: _config("modernbert", v), "minilmv2", 2, "nothing"),
}


@pytest.mark.parametrize("case", sorted(DDP_CASES))
def test_two_process_gloo_run_for_every_family(case, tmp_path, bert_tokenizer, wiki_data):
    import subprocess

    make_config, method, layers, _ = DDP_CASES[case]
    torch.manual_seed(0)
    teacher_dir, out = str(tmp_path / "teacher"), str(tmp_path / "out")
    AutoModel.from_config(make_config(len(bert_tokenizer))).save_pretrained(teacher_dir)
    bert_tokenizer.save_pretrained(teacher_dir)
    student_config = tmp_path / "student.json"
    student_config.write_text(json.dumps({"hidden_size": 48, "num_hidden_layers": layers, "num_attention_heads": 4,
                                          "intermediate_size": 96}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29600 + sorted(DDP_CASES).index(case)), os.path.join(REPO, "general_distill.py"),
           "--pregenerated_data", wiki_data, "--teacher_model", teacher_dir, "--student_model", str(student_config),
           "--distill_method", method, "--output_dir", out, "--train_batch_size", "4", "--max_steps", "2",
           "--learning_rate", "1e-3", "--warmup_proportion", "0", "--logging_steps", "1"]
    cmd += ["--num_relation_heads", "4"] if method == "minilmv2" else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Expected to have finished reduction" not in proc.stderr
    with open(os.path.join(out, "train_log.jsonl")) as f:
        assert [json.loads(line)["step"] for line in f] == [1, 2]
