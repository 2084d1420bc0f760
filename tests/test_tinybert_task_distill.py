"""task_distill.py (both stages) and run_glue.py on real SST-2 / STS-B slices with tiny models; loss wiring
checked against a hand computation."""
import json
import math
import os

import pytest
import torch
from conftest import make_tiny_model_dir

from tinybert.scripts import run_glue
from pipelines.scripts import task_distill
from kdcore.cli import UserError
from tinybert.glue import get_task
from tinybert.intermediate import TinyBertIntermediateObjective
from tinybert.task_distill import PredictionDistillObjective

STUDENT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                              "tiny_student_2L_64D.json")  # 2 layers, 64 wide, 4 heads


def _json(path):
    with open(path) as f:
        return json.load(f)


def _log(folder):
    with open(os.path.join(folder, "train_log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "loss" in r]  # training records (evaluations are logged as eval_*)


@pytest.fixture(scope="module")
def base_teacher_dir(tmp_path_factory, bert_tokenizer):
    """A tiny random 4-layer, 96-wide, 4-head BERT with the packaged teacher's vocabulary (fine-tuned below)."""
    return make_tiny_model_dir(tmp_path_factory.mktemp("base_teacher"), num_layers=4, hidden=96, heads=4,
                               tokenizer=bert_tokenizer)


def _pair_models(num_labels, eager=True):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    kw = dict(vocab_size=120, num_attention_heads=4, max_position_embeddings=64, num_labels=num_labels,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    teacher = BertForSequenceClassification(BertConfig(hidden_size=48, num_hidden_layers=4, intermediate_size=96, **kw))
    student = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **kw))
    return teacher.eval(), student


def _batch():
    ids = torch.randint(5, 120, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1] * 9, [1] * 6 + [0] * 3, [1] * 2 + [0] * 7])
    types = torch.tensor([[0] * 5 + [1] * 4, [0] * 3 + [1] * 3 + [0] * 3, [0] * 9])
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": types}


def _manual_scores(model, hidden_in, layer, num_heads):
    attn = model.bert.encoder.layer[layer].attention.self
    b, t, _ = hidden_in.shape
    q = attn.query(hidden_in).view(b, t, num_heads, -1).transpose(1, 2)
    k = attn.key(hidden_in).view(b, t, num_heads, -1).transpose(1, 2)
    return q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))


def test_stage1_losses_match_a_hand_computation():
    teacher, student = _pair_models(2)
    objective = TinyBertIntermediateObjective(teacher, student).eval()
    assert objective.fit_dense.weight.shape == (48, 32)  # student width -> teacher width from the teacher config
    assert objective.teacher_layers == [1, 3]
    batch = _batch()
    with torch.no_grad():
        out = objective(**batch)
        s = student.bert(**batch, output_hidden_states=True).hidden_states
        t = teacher.bert(**batch, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"]
        real = [torch.nonzero(mask[b]).view(-1) for b in range(3)]

        def hid(sh, th):  # mean over real tokens of the per-token mean squared error
            errs = [((objective.fit_dense(sh[b, r]) - th[b, r]) ** 2).mean(-1) for b, r in enumerate(real)]
            return torch.cat(errs).mean()

        emb = hid(s[0], t[0])
        hidden = hid(s[1], t[2]) + hid(s[2], t[4])  # student state j <- teacher state 2j
        att = 0.0
        for s_layer, t_layer in ((0, 1), (1, 3)):
            a_s = _manual_scores(student, s[s_layer], s_layer, 4)
            a_t = _manual_scores(teacher, t[t_layer], t_layer, 4)
            sq = [((a_s[b][:, r][:, :, r] - a_t[b][:, r][:, :, r]) ** 2).reshape(-1) for b, r in enumerate(real)]
            att = att + torch.cat(sq).mean()  # over heads and real (query, key) pairs
    torch.testing.assert_close(out["embedding"], emb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["hidden"], hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["attention"], att, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], emb + hidden + att, rtol=1e-5, atol=1e-6)
    # only the encoder and fit_dense learn in stage 1; the teacher gets no gradient
    objective.train()
    objective(**batch)["loss"].backward()
    assert objective.fit_dense.weight.grad is not None
    assert student.bert.encoder.layer[0].attention.self.query.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    assert not student.classifier.weight.requires_grad


@pytest.mark.parametrize("task_name,num_labels", [("SST-2", 2), ("STS-B", 1)])
def test_stage2_loss_is_soft_ce_or_mse_to_the_teacher(task_name, num_labels):
    teacher, student = _pair_models(num_labels)
    objective = PredictionDistillObjective(teacher, student, get_task(task_name), temperature=2.0).eval()
    batch = _batch()
    labels = torch.full((3,), 4.0) if num_labels == 1 else torch.tensor([0, 1, 1])
    with torch.no_grad():
        got = objective(**batch, labels=labels)["loss"]
        s = student(**batch).logits
        t = teacher(**batch).logits
    if num_labels == 1:
        expected = ((s.view(-1) - t.view(-1)) ** 2).mean()  # the teacher's score, not the gold label
    else:
        expected = -(torch.softmax(t / 2, -1) * torch.log_softmax(s / 2, -1)).sum(-1).mean()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_stage1_original_reduction_matches_tinyberts_computation():
    """--loss_reduction original: plain means over the padded batch, as TinyBERT's code (scores of padded keys get
    the additive mask -10000 and every score <= -100 is then set to 0 in both models)."""
    teacher, student = _pair_models(2)
    objective = TinyBertIntermediateObjective(teacher, student, reduction="original").eval()
    batch = _batch()
    with torch.no_grad():
        out = objective(**batch)
        s = student.bert(**batch, output_hidden_states=True).hidden_states
        t = teacher.bert(**batch, output_hidden_states=True).hidden_states
        key_pad = (1.0 - batch["attention_mask"].float())[:, None, None, :] * -10000.0

        def hid(sh, th):  # every (example, position, unit), padding included
            diff = objective.fit_dense(sh) - th
            return (diff ** 2).sum() / diff.numel()

        emb = hid(s[0], t[0])
        hidden = hid(s[1], t[2]) + hid(s[2], t[4])
        att = 0.0
        for s_layer, t_layer in ((0, 1), (1, 3)):
            a_s = _manual_scores(student, s[s_layer], s_layer, 4) + key_pad
            a_t = _manual_scores(teacher, t[t_layer], t_layer, 4) + key_pad
            a_s = torch.where(a_s <= -100, torch.zeros_like(a_s), a_s)
            a_t = torch.where(a_t <= -100, torch.zeros_like(a_t), a_t)
            att = att + ((a_s - a_t) ** 2).sum() / a_s.numel()  # B * H * T * T entries
        default = TinyBertIntermediateObjective(teacher, student).eval()
        default.fit_dense.load_state_dict(objective.fit_dense.state_dict())
        real_only = default(**batch)
    torch.testing.assert_close(out["embedding"], emb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["hidden"], hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["attention"], att, rtol=1e-5, atol=1e-6)
    # the batch has padding, so the two reductions give different numbers
    assert not torch.allclose(out["attention"], real_only["attention"])


@pytest.mark.parametrize("task_name,num_labels", [("SST-2", 2), ("STS-B", 1)])
def test_stage2_original_options(task_name, num_labels):
    teacher, student = _pair_models(num_labels)
    kw = {"stsb_target": "gold"} if num_labels == 1 else {"loss_reduction": "original"}
    objective = PredictionDistillObjective(teacher, student, get_task(task_name), temperature=2.0, **kw).eval()
    batch = _batch()
    labels = torch.tensor([4.0, 1.5, 0.0]) if num_labels == 1 else torch.tensor([0, 1, 1])
    with torch.no_grad():
        got = objective(**batch, labels=labels)["loss"]
        s = student(**batch).logits
        t = teacher(**batch).logits
    if num_labels == 1:  # --stsb_target gold: MSE to the gold scores
        expected = sum((s[b, 0] - labels[b]) ** 2 for b in range(3)) / 3
    else:  # original soft cross-entropy: averaged over the 3 x 2 (example, class) entries
        p_t, log_p_s = torch.softmax(t / 2, -1), torch.log_softmax(s / 2, -1)
        expected = -sum(p_t[b, c] * log_p_s[b, c] for b in range(3) for c in range(2)) / 6
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_stsb_target_gold_is_refused_for_classification(tmp_path, shared_data):
    with pytest.raises(UserError, match="--stsb_target gold is for the regression task STS-B, not SST-2"):
        task_distill.main(["--pred_distill", "--teacher_model", "T", "--student_model", STUDENT_CONFIG, "--task_name",
                           "SST-2", "--data_dir", os.path.join(shared_data, "glue", "SST-2"), "--output_dir",
                           str(tmp_path / "out"), "--stsb_target", "gold"])
    assert not (tmp_path / "out").exists()


def test_head_count_mismatch_is_a_clear_error():
    from transformers import BertConfig, BertForSequenceClassification

    teacher, _ = _pair_models(2)
    student = BertForSequenceClassification(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UserError, match=r"equal head counts \(teacher 4, student 2\)"):
        TinyBertIntermediateObjective(teacher, student)


def _common(data_dir, out, train_n=192, eval_n=96):
    return ["--data_dir", data_dir, "--output_dir", out, "--max_seq_length", "64", "--train_batch_size", "16",
            "--eval_batch_size", "32", "--max_train_examples", str(train_n), "--max_eval_examples", str(eval_n),
            "--logging_steps", "4"]


@pytest.mark.parametrize("task_name", ["SST-2", "STS-B"])
def test_glue_pipeline_on_real_slices(tmp_path, shared_data, base_teacher_dir, task_name):
    from transformers import AutoModelForSequenceClassification

    task = get_task(task_name)
    data = os.path.join(shared_data, "glue", task_name)
    teacher_dir, s1, s2, ev = (str(tmp_path / n) for n in ("teacher", "stage1", "stage2", "eval"))

    # 1) run_glue: plain fine-tuning of the teacher; the loss goes down
    run_glue.main(["--model_name_or_path", base_teacher_dir, "--task_name", task_name, "--data_dir", data,
                   "--do_train", "--do_eval", "--output_dir", teacher_dir, "--per_gpu_train_batch_size", "16",
                   "--num_train_epochs", "3", "--learning_rate", "1e-3", "--max_train_examples", "192",
                   "--max_eval_examples", "96", "--max_seq_length", "64", "--logging_steps", "4"])
    log = _log(teacher_dir)
    assert log[-1]["loss"] < log[0]["loss"]
    res = _json(os.path.join(teacher_dir, "eval_results.json"))
    assert set(res) == ({"acc", "eval_loss"} if task.labels else {"pearson", "spearmanr", "corr", "eval_loss"})
    teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    assert teacher.config.num_labels == task.num_labels

    # 2) stage 1: intermediate layers from a configs/ student (64 wide) into the 96-wide teacher
    task_distill.main(["--teacher_model", teacher_dir, "--student_model", STUDENT_CONFIG, "--task_name", task_name,
                       "--num_train_epochs", "2", "--learning_rate", "1e-3"] + _common(data, s1))
    log = _log(s1)
    assert {"embedding", "hidden", "attention"} <= set(log[0])
    assert log[-1]["loss"] < 0.8 * log[0]["loss"]
    res1 = _json(os.path.join(s1, "eval_results.json"))
    assert res1["distill_loss"] == pytest.approx(res1["distill_embedding"] + res1["distill_hidden"] + res1["distill_attention"])
    from safetensors.torch import load_file

    assert load_file(os.path.join(s1, "fit_dense.safetensors"))["weight"].shape == (96, 64)
    # stage 1 trains as TinyBERT's intermediate stage did: a constant rate, no warmup (recorded in its card)
    assert {r["lr"] for r in log} == {1e-3}
    card1 = _json(os.path.join(s1, "training_args.json"))["args"]
    assert (card1["lr_schedule"], card1["warmup_proportion"]) == ("constant", 0.0)

    # 3) stage 2: prediction layer; the best checkpoint on the task's metric is kept and reported
    task_distill.main(["--pred_distill", "--teacher_model", teacher_dir, "--student_model", s1, "--task_name",
                       task_name, "--num_train_epochs", "2", "--learning_rate", "1e-3", "--eval_step", "6",
                       "--temperature", "1.0"] + _common(data, s2))
    res2 = _json(os.path.join(s2, "eval_results.json"))
    with open(os.path.join(s2, "train_log.jsonl")) as f:
        evals = [r for r in map(json.loads, f) if f"eval_{task.metric}" in r]
    assert len(evals) >= 3
    assert res2[task.metric] == pytest.approx(max(r[f"eval_{task.metric}"] for r in evals))
    student = AutoModelForSequenceClassification.from_pretrained(s2)
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == 64
    assert student.config.id2label == teacher.config.id2label
    assert not os.path.exists(os.path.join(s2, "fit_dense.safetensors"))
    # its model card describes the best checkpoint it holds: that step, and the reported result as a Hub metric
    from kdcore.model_card import read_front_matter

    card = _json(os.path.join(s2, "training_args.json"))
    assert (card["args"]["lr_schedule"], card["args"]["warmup_proportion"]) == ("linear", 0.1)  # stage 2's defaults
    assert card["global_step"] == res2["global_step"] and card["results"][task.metric] == res2[task.metric]
    assert card["args"]["pred_distill"] is True and card["inputs"][0]["path"] == os.path.abspath(data)
    meta = read_front_matter(s2)
    assert meta["base_model"] == teacher_dir and meta["datasets"] == [f"glue/{task_name}"]
    assert {"tinybert", "task-distillation", "prediction-layer"} <= set(meta["tags"])
    metrics = {m["name"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics[task.metric] == pytest.approx(res2[task.metric])

    # 4) evaluation only: the saved model reproduces the reported numbers
    task_distill.main(["--do_eval", "--student_model", s2, "--task_name", task_name] + _common(data, ev))
    res3 = _json(os.path.join(ev, "eval_results.json"))
    assert res3[task.metric] == pytest.approx(res2[task.metric], abs=1e-6)


def test_do_predict_writes_glue_submission(tmp_path, shared_data, tiny_bert_dir):
    data = tmp_path / "SST-2"
    data.mkdir()
    src = os.path.join(shared_data, "glue", "SST-2")
    with open(os.path.join(src, "dev.tsv")) as f:
        dev = f.read().splitlines()[:21]
    (data / "train.tsv").write_text("\n".join(dev) + "\n")
    (data / "dev.tsv").write_text("\n".join(dev) + "\n")
    (data / "test.tsv").write_text("index\tsentence\n" + "".join(f"{i}\t{line.split(chr(9))[0]}\n" for i, line in enumerate(dev[1:11])))
    out = str(tmp_path / "out")
    run_glue.main(["--model_name_or_path", tiny_bert_dir, "--task_name", "sst-2", "--data_dir", str(data),
                   "--do_eval", "--do_predict", "--output_dir", out])
    with open(os.path.join(out, "SST-2.tsv")) as f:
        lines = f.read().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 11
    assert [line.split("\t")[0] for line in lines[1:]] == [str(i) for i in range(10)]
    assert all(line.split("\t")[1] in ("0", "1") for line in lines[1:])


def test_mnli_label_order_comes_from_the_model(tmp_path, bert_tokenizer):
    """An HF-fine-tuned MNLI model orders its outputs entailment/neutral/contradiction; accuracy must use it."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(bert_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=64, id2label={0: "entailment", 1: "neutral", 2: "contradiction"})
    model = AutoModelForSequenceClassification.from_config(config)
    model_dir = str(tmp_path / "mnli_model")
    model.save_pretrained(model_dir)
    bert_tokenizer.save_pretrained(model_dir)
    header = "index\tpromptID\tpairID\tgenre\ts1b\ts2b\ts1p\ts2p\tsentence1\tsentence2\tlabel1\tgold_label"
    pairs = [("A man sleeps.", "A person rests."), ("Dogs bark.", "Cats fly."), ("It rains.", "The sky is wet."),
             ("She runs fast.", "She is slow."), ("Kids play.", "Children are outside.")]
    gold = ["entailment", "contradiction", "neutral", "contradiction", "neutral"]
    data = tmp_path / "MNLI"
    data.mkdir()
    rows = [f"{i}\t0\t0\tg\t-\t-\t-\t-\t{a}\t{b}\t{g}\t{g}" for i, ((a, b), g) in enumerate(zip(pairs, gold))]
    for name in ("dev_matched.tsv", "dev_mismatched.tsv"):
        (data / name).write_text(header + "\n" + "\n".join(rows) + "\n")
    out = str(tmp_path / "out")
    task_distill.main(["--do_eval", "--student_model", model_dir, "--task_name", "MNLI", "--data_dir", str(data),
                       "--output_dir", out])
    res = _json(os.path.join(out, "eval_results.json"))
    with torch.no_grad():
        enc = bert_tokenizer([a for a, _ in pairs], [b for _, b in pairs], padding=True, return_tensors="pt")
        pred = model.eval()(**enc).logits.argmax(-1).tolist()
    expected = sum(config.id2label[p] == g for p, g in zip(pred, gold)) / len(gold)
    assert res["acc"] == pytest.approx(expected) and res["mm_acc"] == pytest.approx(expected)


@pytest.mark.parametrize("rows,message", [
    (["sentence\tlabel", "fine film\t1", "a row without its label"], r"train\.tsv:3: expected at least 2"),
    (["sentence\tlabel", "fine film\t1", "odd film\tpositive"], r"train\.tsv:3: label 'positive' is not one of"),
])
def test_bad_training_rows_stop_before_training(tmp_path, tiny_bert_dir, rows, message):
    data = tmp_path / "d"
    data.mkdir()
    (data / "train.tsv").write_text("\n".join(rows) + "\n")
    (data / "dev.tsv").write_text("sentence\tlabel\nok\t0\n")
    with pytest.raises(UserError, match=message):
        task_distill.main(["--teacher_model", tiny_bert_dir, "--student_model", tiny_bert_dir, "--task_name", "SST-2",
                           "--data_dir", str(data), "--output_dir", str(tmp_path / "o")])
    assert not os.path.exists(tmp_path / "o" / "model.safetensors")
    with pytest.raises(UserError, match="unknown task 'sst5'"):
        task_distill.main(["--teacher_model", tiny_bert_dir, "--student_model", tiny_bert_dir, "--task_name", "sst5",
                           "--data_dir", str(data), "--output_dir", str(tmp_path / "o")])


def test_run_glue_eval_all_checkpoints_scores_each_checkpoint_beside_it(tmp_path, shared_data, tiny_bert_dir):
    data = tmp_path / "SST-2"
    data.mkdir()
    with open(os.path.join(shared_data, "glue", "SST-2", "dev.tsv")) as f:
        dev = f.read().splitlines()[:17]
    (data / "train.tsv").write_text("\n".join(dev) + "\n")
    (data / "dev.tsv").write_text("\n".join(dev) + "\n")
    out = tmp_path / "out"
    final = run_glue.main(["--model_name_or_path", tiny_bert_dir, "--task_name", "sst-2", "--data_dir", str(data),
                           "--do_train", "--do_eval", "--eval_all_checkpoints", "--output_dir", str(out),
                           "--per_gpu_train_batch_size", "8", "--num_train_epochs", "2", "--save_steps", "2"])
    scored = sorted(p.name for p in out.iterdir() if (p / "eval_results.json").is_file())
    assert scored == ["checkpoint-2", "checkpoint-4"]  # 16 examples / 8 = 2 steps an epoch, 2 epochs
    with open(out / "checkpoint-4" / "eval_results.json") as f:
        last = json.load(f)
    assert last["acc"] == pytest.approx(final["acc"])  # the last checkpoint is the final model
