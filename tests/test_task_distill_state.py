"""Task distillation keeps general distillation's state (fit_dense), starts from the teacher's layers on request,
and caches the teacher's logits (equal to fresh ones; keyed by data, teacher and max length)."""
import json
import os

import pytest
import torch
from conftest import REPO, make_tiny_model_dir

from tinybert.scripts import run_glue
from pipelines.scripts import task_distill
from kdcore.cli import UserError
from kdcore.logit_cache import cached_teacher_logits
from tinybert.classification import glue_collate
from tinybert.glue import encode, get_task, load_split
from tinybert.task_distill import PredictionDistillObjective, teacher_logits_for, with_example_index

TINY_STUDENT = os.path.join(REPO, "configs", "tiny_student_2L_64D.json")  # 2 layers, 64 wide, 4 heads


def _pair(num_labels=2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    kw = dict(vocab_size=120, num_attention_heads=4, max_position_embeddings=64, num_labels=num_labels)
    teacher = BertForSequenceClassification(BertConfig(hidden_size=48, num_hidden_layers=4, intermediate_size=96, **kw))
    student = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **kw))
    return teacher.eval(), student


def test_stage1_loads_fit_dense_saved_beside_the_student(tmp_path, shared_data, bert_tokenizer):
    """task_distill.py stage 1 from a general-distillation folder starts from the fit_dense saved there (learning
    rate 0 keeps it, so the output's fit_dense is the input's); a folder without one gets general distillation's
    initialisation (N(0, initializer_range), zero bias)."""
    from safetensors.torch import load_file, save_file

    from kdcore.modeling import save_model
    from tinybert.intermediate import TinyBertIntermediateObjective

    teacher_dir = make_tiny_model_dir(tmp_path / "t", num_layers=4, hidden=64, heads=4, tokenizer=bert_tokenizer)
    student_dir = make_tiny_model_dir(tmp_path / "s", num_layers=2, hidden=32, heads=4, tokenizer=bert_tokenizer)
    saved = {"weight": torch.randn(64, 32), "bias": torch.randn(64)}
    save_file(saved, os.path.join(student_dir, "fit_dense.safetensors"))
    out = tmp_path / "stage1"
    task_distill.main(["--teacher_model", teacher_dir, "--student_model", student_dir, "--task_name", "SST-2",
                       "--data_dir", os.path.join(shared_data, "glue", "SST-2"), "--output_dir", str(out),
                       "--learning_rate", "0", "--max_steps", "1", "--train_batch_size", "8", "--max_train_examples",
                       "8", "--max_eval_examples", "8", "--max_seq_length", "32"])
    carried = load_file(out / "fit_dense.safetensors")
    assert torch.equal(carried["weight"], saved["weight"]) and torch.equal(carried["bias"], saved["bias"])
    teacher, student = _pair()
    torch.manual_seed(3)
    fresh = TinyBertIntermediateObjective(teacher, student).fit_dense
    assert torch.count_nonzero(fresh.bias) == 0 and fresh.weight.std().item() == pytest.approx(0.02, rel=0.15)
    save_model(student, str(tmp_path / "bad"), extra_modules={"fit_dense": torch.nn.Linear(32, 8)})
    objective = TinyBertIntermediateObjective(teacher, student)
    with pytest.raises(UserError, match="fit_dense.safetensors: does not fit this teacher/student pair"):
        objective.load_extras(str(tmp_path / "bad"))


@pytest.mark.parametrize("method", ["minilm", "minilmv2"])
def test_stage1_takes_any_general_methods_objective(tmp_path, shared_data, bert_tokenizer, method):
    """`task_distill.py --distill_method M` (stage 1) trains with general distillation's objective M on the two
    classifiers: its dev losses (learning rate 0: the student as loaded) equal M's objective computed another way, on
    the bare encoders (AutoModel) over the same 8 dev sentences; the output is a classifier folder."""
    from argparse import Namespace

    from transformers import AutoModel, AutoModelForSequenceClassification

    from pipelines.methods import METHODS

    teacher_dir = make_tiny_model_dir(tmp_path / "t", num_layers=4, hidden=64, heads=4, tokenizer=bert_tokenizer)
    student_dir = make_tiny_model_dir(tmp_path / "s", num_layers=2, hidden=32, heads=4, tokenizer=bert_tokenizer)
    out = tmp_path / "stage1"
    sst2 = os.path.join(shared_data, "glue", "SST-2")
    extra = ["--num_relation_heads", "4"] if method == "minilmv2" else []
    result = task_distill.main(["--teacher_model", teacher_dir, "--student_model", student_dir, "--task_name", "SST-2",
                                "--data_dir", sst2, "--output_dir", str(out), "--distill_method", method, *extra,
                                "--learning_rate", "0", "--max_steps", "1", "--train_batch_size", "8",
                                "--max_train_examples", "8", "--max_eval_examples", "8", "--eval_batch_size", "8",
                                "--max_seq_length", "32"])
    assert AutoModelForSequenceClassification.from_pretrained(str(out)).config.num_hidden_layers == 2
    task = get_task("SST-2")
    dev = encode(load_split(sst2, task, "dev", max_examples=8), bert_tokenizer, task, ["0", "1"], 32)
    batch = glue_collate(bert_tokenizer)(dev)
    args = Namespace(teacher_layer=None, num_relation_heads=4, qq_weight=1.0, kk_weight=1.0, vv_weight=1.0,
                     attention_weight=1.0, value_relation_weight=1.0)
    objective = METHODS[method].build(args, AutoModel.from_pretrained(teacher_dir).eval(),
                                      AutoModel.from_pretrained(student_dir).eval())
    with torch.no_grad():
        expected = objective(**_inputs(batch))
    terms = [k for k in expected if k != "loss"]
    assert terms and all(result[f"distill_{k}"] == pytest.approx(float(expected[k]), rel=1e-5) for k in terms)


def test_stage1_method_options_belong_to_the_method(tmp_path):
    common = ["--teacher_model", str(tmp_path), "--student_model", str(tmp_path), "--task_name", "SST-2",
              "--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    with pytest.raises(UserError, match="--teacher_layer is for --distill_method minilm/minilmv2, not tinybert"):
        task_distill.main([*common, "--teacher_layer", "2"])
    with pytest.raises(UserError, match="--distill_method minilmv2 chooses stage 1's objective"):
        task_distill.main([*common, "--pred_distill", "--distill_method", "minilmv2"])


def _sst2(shared_data, tokenizer, n=40, max_len=32):
    task = get_task("SST-2")
    examples = load_split(os.path.join(shared_data, "glue", "SST-2"), task, "train", max_examples=n)
    return encode(examples, tokenizer, task, ["0", "1"], max_len)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k != "labels"}


def test_cached_logits_equal_fresh_ones_and_are_keyed(tmp_path, shared_data, bert_tokenizer):
    from transformers import AutoModelForSequenceClassification

    folder = make_tiny_model_dir(tmp_path / "t", num_layers=2, hidden=32, tokenizer=bert_tokenizer)
    teacher = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2).eval()
    teacher.save_pretrained(folder)
    data, collate = _sst2(shared_data, bert_tokenizer), glue_collate(bert_tokenizer)
    cache = tmp_path / "cache"
    logits = teacher_logits_for(teacher, folder, data, collate, 32, "SST-2", str(cache), 7, "cpu")
    with torch.no_grad():  # fresh: one example at a time, no padding at all
        fresh = torch.cat([teacher(**_inputs(collate([data[i]]))).logits for i in range(len(data))])
    assert torch.allclose(logits, fresh, atol=1e-5)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".safetensors")

    def boom():
        raise AssertionError("the teacher must not run again")

    key = {"data": "d", "teacher": "t", "max_seq_length": 3}
    again = teacher_logits_for(teacher, folder, data, collate, 32, "SST-2", str(cache), 7, "cpu")  # read back
    assert torch.equal(again, logits) and len(os.listdir(cache)) == 1
    # another max length (other inputs) or another teacher -> another file, never the old one
    teacher_logits_for(teacher, folder, _sst2(shared_data, bert_tokenizer, max_len=8), collate, 8, "SST-2", str(cache),
                       7, "cpu")
    assert len(os.listdir(cache)) == 2
    cached_teacher_logits(str(tmp_path / "c2"), key, 3, lambda: torch.zeros(3, 2))
    assert torch.equal(cached_teacher_logits(str(tmp_path / "c2"), key, 3, boom), torch.zeros(3, 2))
    with pytest.raises(UserError, match=r"shape \(3, 2\), expected \(4, 2\)"):
        cached_teacher_logits(str(tmp_path / "c2"), key, 4, boom)
    with pytest.raises(UserError, match=r"expected \(3, 5\)"):  # a teacher with other labels
        cached_teacher_logits(str(tmp_path / "c2"), key, 3, boom, num_outputs=5)
    # An intact header (the key's metadata) over values that are not finite: refused, never trained on.
    from safetensors import safe_open
    from safetensors.torch import save_file

    (path,) = [os.path.join(tmp_path, "c2", n) for n in os.listdir(tmp_path / "c2")]
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    save_file({"logits": torch.tensor([[0.0, float("nan")], [1.0, 2.0], [float("inf"), 0.0]])}, path, metadata=meta)
    with pytest.raises(UserError, match="2 teacher logits are not finite"):
        cached_teacher_logits(str(tmp_path / "c2"), key, 3, boom, num_outputs=2)


def test_stage2_loss_with_cached_logits_equals_the_teacher_forward(shared_data, bert_tokenizer):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    kw = dict(vocab_size=len(bert_tokenizer), num_attention_heads=4, num_labels=2, max_position_embeddings=64)
    teacher = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64, **kw)).eval()
    student = BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=1, intermediate_size=64, **kw)).eval()
    items, collate = _sst2(shared_data, bert_tokenizer, n=12), glue_collate(bert_tokenizer)
    with torch.no_grad():
        cached = torch.cat([teacher(**_inputs(collate([items[i]]))).logits for i in range(12)])
    indexed = with_example_index(items)
    batch = collate([indexed[i] for i in (5, 2, 9)])
    live = PredictionDistillObjective(teacher, student, get_task("SST-2"))
    fast = PredictionDistillObjective(teacher, student, get_task("SST-2"), teacher_logits=cached)
    with torch.no_grad():
        assert fast(**batch)["loss"].item() == pytest.approx(live(**batch)["loss"].item(), abs=1e-5)
        assert torch.equal(batch["example_index"], torch.tensor([5, 2, 9]))


def test_task_distill_from_the_fine_tuned_teachers_layers(tmp_path, shared_data, bert_tokenizer):
    """--student_init teacher_layers in task_distill.py: the student starts as the fine-tuned teacher's layers and
    classifier (learning rate 0 keeps them), and the run records it in config.json."""
    from safetensors.torch import load_file

    base = make_tiny_model_dir(tmp_path / "base", num_layers=4, hidden=64, heads=4, tokenizer=bert_tokenizer)
    data = os.path.join(shared_data, "glue", "SST-2")
    common = ["--task_name", "SST-2", "--data_dir", data, "--max_seq_length", "32", "--max_train_examples", "32",
              "--max_eval_examples", "32", "--logging_steps", "1"]
    ft = str(tmp_path / "ft")
    run_glue.main(["--model_name_or_path", base, "--do_train", "--do_eval", "--output_dir", ft, "--num_train_epochs",
                   "1", "--per_gpu_train_batch_size", "16", *common])
    out = tmp_path / "kd"
    task_distill.main(["--pred_distill", "--teacher_model", ft, "--student_model", TINY_STUDENT,
        "--student_init", "teacher_layers", "--init_layers", "2,4",
        "--output_dir", str(out), "--learning_rate", "0", "--train_batch_size", "16", "--num_train_epochs", "1",
        "--eval_step", "1000", *common])
    t, s = load_file(os.path.join(ft, "model.safetensors")), load_file(out / "model.safetensors")
    assert torch.equal(s["classifier.weight"], t["classifier.weight"])
    key = "bert.encoder.layer.{}.output.dense.weight"
    assert torch.equal(s[key.format(0)], t[key.format(1)]) and torch.equal(s[key.format(1)], t[key.format(3)])
    assert json.load(open(out / "config.json"))["student_init"]["layers"] == [2, 4]
    assert any(n.startswith("teacher_logits-") for n in os.listdir(out))  # cached beside the output by default
