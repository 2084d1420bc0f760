"""general_distill.py: TinyBERT / MiniLM v1 / MiniLMv2 objectives on BERT, RoBERTa and XLM-R teachers, and CI-sized
runs from the packaged real teacher over pregenerated real text."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, RobertaConfig, XLMRobertaConfig

from kdcore.cli import UserError, parse_args
from kdcore.modeling import build_student
from minilm.v1 import MiniLMv1Objective
from minilm.v2 import MiniLMv2Objective
from tinybert.intermediate import TinyBertIntermediateObjective
from pregenerated_writer import real_paragraphs, write_pregenerated
from test_minilm_losses import slow_relation_kl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_TYPES = {
    "bert": (BertConfig, {}),
    "roberta": (RobertaConfig, {"pad_token_id": 1, "type_vocab_size": 1, "max_position_embeddings": 40}),
    "xlm-roberta": (XLMRobertaConfig, {"pad_token_id": 1, "type_vocab_size": 1, "max_position_embeddings": 40}),
}


def _teacher(model_type, layers=4, hidden=48, heads=4, attn="sdpa"):
    cls, extra = TEACHER_TYPES[model_type]
    torch.manual_seed(0)
    config = cls(vocab_size=120, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 intermediate_size=2 * hidden, initializer_range=0.2,
                 **{"max_position_embeddings": 64, **extra})
    return AutoModel.from_config(config, attn_implementation=attn).eval()


def _student(tmp_path, teacher, layers=2, hidden=24, heads=4):
    path = tmp_path / f"student_{layers}x{hidden}x{heads}.json"
    path.write_text(json.dumps({"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
                                "intermediate_size": 2 * hidden}))
    torch.manual_seed(1)
    return build_student(str(path), teacher.config)


def _batch(teacher, lengths=(11, 6, 1, 9)):
    g = torch.Generator().manual_seed(3)
    pad = teacher.config.pad_token_id or 0
    T = max(lengths)
    ids = torch.randint(5, teacher.config.vocab_size, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n:] = pad
    return ids, mask, lengths


def _eager_copy(model):
    copy = AutoModel.from_config(model.config, attn_implementation="eager")
    copy.load_state_dict(model.state_dict(), strict=False)
    return copy.eval()


def _qkv_from_hidden(model, layer, ids, mask):
    """Q, K, V of `layer` recomputed from the layer's input hidden state (no hooks involved), (B, T, D) each."""
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer]
        attn = model.encoder.layer[layer].attention.self
        return attn.query(h), attn.key(h), attn.value(h)


@pytest.mark.parametrize("model_type", list(TEACHER_TYPES))
def test_minilm_v1_attention_term_equals_kl_of_eager_attention_probabilities(tmp_path, model_type):
    teacher = _teacher(model_type)
    student = _student(tmp_path, teacher)
    ids, mask, lengths = _batch(teacher)
    t_eager, s_eager = _eager_copy(teacher), _eager_copy(student)
    objective = MiniLMv1Objective(teacher, student).eval()
    with torch.no_grad():
        out = objective(input_ids=ids, attention_mask=mask)
        p_t = t_eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1].double()
        p_s = s_eager(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1].double()
    want = 0.0
    for b, n in enumerate(lengths):  # KL(teacher || student) per head and real query row, over real keys
        for h in range(p_t.size(1)):
            for i in range(n):
                pt, ps = p_t[b, h, i, :n], p_s[b, h, i, :n]
                want += float((pt * (pt.log() - ps.log())).sum())
    want /= p_t.size(1) * sum(lengths)
    assert out["attention"].item() == pytest.approx(want, rel=1e-4)
    assert out["loss"].item() == pytest.approx(out["attention"].item() + out["value_relation"].item(), rel=1e-6)


@pytest.mark.parametrize("model_type", list(TEACHER_TYPES))
def test_minilmv2_terms_match_formula_on_recomputed_qkv(tmp_path, model_type):
    teacher = _teacher(model_type)
    reference_teacher = _eager_copy(teacher)
    student = _student(tmp_path, teacher, hidden=36, heads=3)  # 3 heads vs the teacher's 4, 36 vs 48 wide
    ids, mask, lengths = _batch(teacher)
    objective = MiniLMv2Objective(teacher, student, teacher_layer=3, num_relation_heads=6,
                                  weights={"qq": 1.0, "kk": 0.5, "vv": 2.0}).eval()
    assert len(objective.teacher.encoder.layer) == 3  # layer 4 is never read, so it is dropped
    with torch.no_grad():
        out = objective(input_ids=ids, attention_mask=mask)
    t_qkv = _qkv_from_hidden(reference_teacher, 2, ids, mask)  # 1-based layer 3 = index 2
    s_qkv = _qkv_from_hidden(student, 1, ids, mask)
    for name, t, s in zip(("qq", "kk", "vv"), t_qkv, s_qkv):
        assert out[name].item() == pytest.approx(slow_relation_kl(t, s, lengths, 6), rel=1e-4), name
    assert out["loss"].item() == pytest.approx(out["qq"].item() + 0.5 * out["kk"].item() + 2 * out["vv"].item(), rel=1e-6)


@pytest.mark.parametrize("model_type", list(TEACHER_TYPES))
def test_tinybert_terms_match_formula(tmp_path, model_type):
    teacher = _teacher(model_type)
    student = _student(tmp_path, teacher, layers=2, hidden=24, heads=4)
    ids, mask, lengths = _batch(teacher)
    objective = TinyBertIntermediateObjective(teacher, student).eval()
    assert tuple(objective.fit_dense.weight.shape) == (48, 24)  # student width -> teacher width from its config
    with torch.no_grad():
        out = objective(input_ids=ids, attention_mask=mask)
        t_h = teacher(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
        s_h = student(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    fit = objective.fit_dense
    N = sum(lengths)

    def mse(s, t):
        return sum(float(((fit(s[b, i]) - t[b, i]) ** 2).mean()) for b, n in enumerate(lengths) for i in range(n)) / N

    def scores(model, layer, h):
        attn = model.encoder.layer[layer].attention.self
        H = model.config.num_attention_heads
        q, k = attn.query(h), attn.key(h)
        d = q.size(-1) // H
        q, k = q.view(*q.shape[:2], H, d), k.view(*k.shape[:2], H, d)
        return torch.einsum("bihd,bjhd->bhij", q, k) / math.sqrt(d)

    with torch.no_grad():
        att = 0.0
        for s_layer, t_layer in ((0, 1), (1, 3)):  # k = 2: student layer i <- teacher layer 2(i+1)-1
            a_s, a_t = scores(student, s_layer, s_h[s_layer]), scores(teacher, t_layer, t_h[t_layer])
            pairs = sum(n * n for n in lengths) * 4
            att += sum(float(((a_s[b, :, :n, :n] - a_t[b, :, :n, :n]) ** 2).sum()) for b, n in enumerate(lengths)) / pairs
        assert out["embedding"].item() == pytest.approx(mse(s_h[0], t_h[0]), rel=1e-4)
        assert out["hidden"].item() == pytest.approx(mse(s_h[1], t_h[2]) + mse(s_h[2], t_h[4]), rel=1e-4)
        assert out["attention"].item() == pytest.approx(att, rel=1e-4)


@pytest.mark.parametrize("method", ["tinybert", "minilm", "minilmv2"])
def test_every_trainable_parameter_gets_a_gradient_and_the_teacher_none(tmp_path, method):
    """So DDP needs no find_unused_parameters: parameters no loss reaches are frozen up front."""
    teacher = _teacher("roberta")
    student = _student(tmp_path, teacher, hidden=24 if method != "minilmv2" else 36, heads=4 if method != "minilmv2" else 3)
    objective = (TinyBertIntermediateObjective(teacher, student) if method == "tinybert"
                 else MiniLMv1Objective(teacher, student) if method == "minilm"
                 else MiniLMv2Objective(teacher, student, num_relation_heads=4)).train()
    ids, mask, _ = _batch(teacher)
    objective(input_ids=ids, attention_mask=mask)["loss"].backward()
    trainable = [(n, p) for n, p in objective.named_parameters() if p.requires_grad]
    assert trainable and all(not n.startswith("teacher.") for n, _ in trainable)
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert not objective.teacher.training


def test_clear_errors_for_incompatible_pairs(tmp_path):
    teacher = _teacher("bert")
    with pytest.raises(UserError, match="equal attention head counts.*use --distill_method minilmv2"):
        MiniLMv1Objective(teacher, _student(tmp_path, teacher, heads=3, hidden=24))
    with pytest.raises(UserError, match=r"--num_relation_heads 48 must divide both hidden sizes \(teacher 48, "
                                         r"student 36\); values that do: 12, 6, 4, 3, 2, 1"):
        MiniLMv2Objective(teacher, _student(tmp_path, teacher, heads=3, hidden=36))
    with pytest.raises(UserError, match="--teacher_layer 5: the teacher has layers 1..4"):
        MiniLMv2Objective(teacher, _student(tmp_path, teacher), teacher_layer=5, num_relation_heads=4)
    with pytest.raises(UserError, match="--layer_map 1,9: layer 9 does not exist; the teacher has layers 1..4"):
        TinyBertIntermediateObjective(teacher, _student(tmp_path, teacher, layers=2), layer_map="1,9")


# ---- CI-sized runs of the script from the packaged real teacher ----------------------------------------------------
@pytest.fixture(scope="module")
def wiki_data(tmp_path_factory, bert_tokenizer, shared_data):
    return write_pregenerated(tmp_path_factory.mktemp("wiki_pregen"), bert_tokenizer, real_paragraphs(shared_data, 32),
                              epochs=1, max_seq_len=40)


def _run(argv):
    sys.path.insert(0, REPO)
    from pipelines.scripts import general_distill

    return general_distill.main(argv)


def _curve(out_dir, term):
    with open(os.path.join(out_dir, "train_log.jsonl")) as f:
        return [r[term] for r in map(json.loads, f) if term in r]


@pytest.mark.parametrize("method,student,extra,terms", [
    ("minilmv2", "minilm_L3xH384.json", [], ("qq", "kk", "vv")),
    ("minilmv2", "tinybert_4L_312D.json", ["--num_relation_heads", "24"], ("qq", "kk", "vv")),
    ("minilm", "minilm_L3xH384.json", ["--reduce_memory"], ("attention", "value_relation")),
    ("tinybert", "minilm_L3xH384.json", [], ("embedding", "hidden", "attention")),
    ("embedding", "minilm_L3xH384.json", ["--relation_weight", "1.0"], ("embedding", "qq", "kk", "vv")),
])
def test_distillation_from_packaged_teacher_lowers_every_term(tmp_path, packaged_teacher, wiki_data, method, student,
                                                              extra, terms):
    out = str(tmp_path / "out")
    result = _run(["--pregenerated_data", wiki_data, "--teacher_model", packaged_teacher,
                   "--student_model", os.path.join(REPO, "configs", student), "--distill_method", method,
                   "--output_dir", out, "--train_batch_size", "8", "--num_train_epochs", "4",
                   "--learning_rate", "1e-3", "--warmup_proportion", "0", "--logging_steps", "1", "--eval_step", "0",
                   "--do_lower_case", *extra])
    assert result.global_step == 16  # 32 examples / 8 per step x 4 epochs
    for term in terms:  # each epoch sees the same 32 examples: compare the first epoch with the last
        curve = _curve(out, term)
        assert len(curve) == 16
        first, last = sum(curve[:4]) / 4, sum(curve[-4:]) / 4
        assert last < 0.9 * first, f"{term}: {first:.4f} -> {last:.4f}"
    model, info = AutoModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    config = json.load(open(os.path.join(REPO, "configs", student)))
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (config["num_hidden_layers"], config["hidden_size"])
    assert model.config.vocab_size == 30522
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        h = model(**tokenizer(["distillation works"], return_tensors="pt")).last_hidden_state
    assert torch.isfinite(h).all()
    assert os.path.isfile(os.path.join(out, "fit_dense.safetensors")) == (method == "tinybert")
    _check_model_card(out, packaged_teacher, wiki_data, method, terms)


def _check_model_card(out, teacher, data, method, terms):
    """The folder says what it is: teacher, method, steps, final losses, inputs, and a command that re-makes it."""
    import hashlib

    from kdcore.model_card import read_front_matter

    meta = read_front_matter(out)
    assert meta["base_model"] == teacher and meta["library_name"] == "transformers"
    assert method in meta["tags"] and "knowledge-distillation" in meta["tags"]
    assert meta["datasets"] == [os.path.basename(os.path.normpath(data))]
    facts = json.load(open(os.path.join(out, "training_args.json")))
    assert facts["script"] == "general_distill.py" and facts["method"] == method
    assert facts["global_step"] == 16 and facts["args"]["teacher_model"] == teacher
    last = [r for r in map(json.loads, open(os.path.join(out, "train_log.jsonl"))) if "loss" in r][-1]
    for term in ("loss", *terms):  # logging every step: the final terms are the last logged ones
        assert facts["final_losses"][term] == pytest.approx(last[term])
    # the pregenerated data is identified by its content: file names and SHA-256 of each file, in order
    (item,) = [i for i in facts["inputs"] if i["argument"] == "--pregenerated_data"]
    digest = hashlib.sha256()
    for name in sorted(os.listdir(data)):
        digest.update(name.encode() + b"\0" + hashlib.sha256(open(os.path.join(data, name), "rb").read()).digest())
    assert item["sha256"] == digest.hexdigest() and item["bytes"] == sum(
        os.path.getsize(os.path.join(data, n)) for n in os.listdir(data))
    # the recorded command parses back to the same arguments
    from pipelines.scripts import general_distill

    again = vars(general_distill.build_parser().parse_args(facts["command"][1:]))
    assert {k: v for k, v in again.items() if k != "config"} == {
        k: v for k, v in facts["args"].items() if k != "config"}
    card = open(os.path.join(out, "README.md")).read()
    assert f"distilled from `{teacher}`" in card and "| training steps | 16 |" in card
    assert all(f"{t} {facts['final_losses'][t]:.4g}" in card for t in terms)


def test_teacher_assistant_chain_and_continue_train(tmp_path, packaged_teacher, wiki_data):
    """teacher (6 x 384) -> assistant (3 x 384) -> student (2 x 64): the output folder of one run is the next's teacher."""
    from argparse import Namespace

    from kdcore.modeling import load_teacher, load_tokenizer
    from kdcore.distill import load_student

    common = ["--pregenerated_data", wiki_data, "--distill_method", "minilmv2", "--train_batch_size", "8",
              "--max_steps", "2", "--eval_step", "0"]
    assistant, student = str(tmp_path / "assistant"), str(tmp_path / "student")
    _run([*common, "--teacher_model", packaged_teacher, "--output_dir", assistant,
          "--student_model", os.path.join(REPO, "configs", "minilm_L3xH384.json")])
    _run([*common, "--teacher_model", assistant, "--output_dir", student, "--num_relation_heads", "16",
          "--student_model", os.path.join(REPO, "configs", "tiny_student_2L_64D.json")])
    model, info = AutoModel.from_pretrained(student, output_loading_info=True)
    assert not info["missing_keys"] and (model.config.num_hidden_layers, model.config.hidden_size) == (2, 64)
    assert len(_curve(student, "qq")) == 1  # logging_steps 50 > 2 steps: only the last step is logged

    # --continue_train starts from a folder's weights; without it only the folder's config.json is used
    teacher = load_teacher(packaged_teacher)
    tokenizer = load_tokenizer(packaged_teacher)
    saved = AutoModel.from_pretrained(assistant).state_dict()
    key = "encoder.layer.0.attention.self.query.weight"
    resumed = load_student(Namespace(student_model=assistant, continue_train=True), teacher, tokenizer)
    fresh = load_student(Namespace(student_model=assistant, continue_train=False), teacher, tokenizer)
    assert torch.equal(resumed.state_dict()[key], saved[key])
    assert not torch.equal(fresh.state_dict()[key], saved[key]) and fresh.config.num_hidden_layers == 3
    with pytest.raises(UserError, match="--continue_train: --student_model .* is not a folder with model weights"):
        load_student(Namespace(student_model=os.path.join(REPO, "configs", "minilm_L3xH384.json"), continue_train=True),
                     teacher, tokenizer)


def test_bad_relation_head_count_exits_2_with_one_line(tmp_path, packaged_teacher, wiki_data):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "general_distill.py"), "--pregenerated_data", wiki_data,
         "--teacher_model", packaged_teacher, "--student_model", os.path.join(REPO, "configs", "tinybert_4L_312D.json"),
         "--distill_method", "minilmv2", "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("general_distill.py: error: --num_relation_heads 48 must divide both hidden sizes "
                           "(teacher 384, student 312); values that do: 24, 12")
    assert not os.path.exists(tmp_path / "out" / "model.safetensors")


def test_recipes_parse_with_the_script_arguments(tmp_path):
    import glob

    sys.path.insert(0, REPO)
    from pipelines.scripts.general_distill import build_parser

    recipes = sorted(glob.glob(os.path.join(REPO, "configs", "recipes", "*_general_*.yaml")))
    assert len(recipes) >= 4
    for recipe in recipes:
        args = parse_args(build_parser(), ["--config", recipe, "--pregenerated_data", "d", "--teacher_model", "t",
                                           "--student_model", "s", "--output_dir", str(tmp_path)])
        assert args.distill_method in ("tinybert", "minilm", "minilmv2")
        assert args.learning_rate > 0 and args.train_batch_size % args.gradient_accumulation_steps == 0
