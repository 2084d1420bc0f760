"""Student initialisation from the teacher's layers, and TinyBERT's layer map for any depth."""
import json
import os

import pytest
import torch
from conftest import REPO, make_tiny_model_dir

from kdcore.cli import UserError
from kdcore.student_init import init_from_teacher_layers, parse_layer_list, uniform_layer_map

TINY_STUDENT = os.path.join(REPO, "configs", "tiny_student_2L_64D.json")  # 2 layers, 64 wide, 4 heads


def _bert(layers, hidden=32, heads=4, seed=0, cls=None):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=99, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=2 * hidden, max_position_embeddings=64, num_labels=2)
    return (cls or BertModel)(cfg)


@pytest.mark.parametrize("n_s,n_t,expected", [(3, 6, [2, 4, 6]), (4, 12, [3, 6, 9, 12]), (4, 6, [2, 3, 5, 6]),
                                              (3, 4, [1, 3, 4]), (1, 6, [6]), (6, 6, [1, 2, 3, 4, 5, 6])])
def test_uniform_layer_map_spreads_layers_and_keeps_the_top(n_s, n_t, expected):
    assert uniform_layer_map(n_s, n_t) == expected


def test_layer_list_parsing_and_errors():
    assert parse_layer_list("2, 4,6", 3, 6, "--init_layers") == [2, 4, 6]
    assert parse_layer_list(None, 3, 6, "--init_layers") == [2, 4, 6]
    with pytest.raises(UserError, match="--init_layers 2,4: 2 layers given, the student has 3"):
        parse_layer_list("2,4", 3, 6, "--init_layers")
    with pytest.raises(UserError, match="layer 7 does not exist; the teacher has layers 1..6"):
        parse_layer_list("2,4,7", 3, 6, "--init_layers")
    with pytest.raises(UserError, match="expected comma-separated layer numbers"):
        parse_layer_list("two", 1, 6, "--layer_map")


def test_init_copies_embeddings_and_the_chosen_layers():
    teacher, student = _bert(4, seed=0), _bert(2, seed=1)
    assert init_from_teacher_layers(student, teacher, [2, 4], "T") == [2, 4]
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for name, value in s_state.items():
        if name.startswith("encoder.layer."):
            i, rest = name[len("encoder.layer."):].split(".", 1)
            source = f"encoder.layer.{[1, 3][int(i)]}.{rest}"  # student 1 <- teacher 2, student 2 <- teacher 4
        else:
            source = name  # embeddings and pooler
        assert torch.equal(value, t_state[source]), name
    assert student.config.student_init == {"from": "T", "layers": [2, 4]}
    # the copy is a function-preserving one for the embeddings: identical embedding outputs
    ids = torch.randint(0, 99, (2, 7))
    assert torch.equal(student.eval().embeddings(ids), teacher.eval().embeddings(ids))


def test_init_copies_a_classifier_head_between_classifiers():
    from transformers import BertForSequenceClassification

    teacher = _bert(4, seed=0, cls=BertForSequenceClassification)
    student = _bert(2, seed=1, cls=BertForSequenceClassification)
    init_from_teacher_layers(student, teacher, [1, 3])
    assert torch.equal(student.classifier.weight, teacher.classifier.weight)
    assert torch.equal(student.bert.encoder.layer[1].output.dense.weight, teacher.bert.encoder.layer[2].output.dense.weight)


def test_width_mismatch_is_one_clear_error():
    with pytest.raises(UserError, match="student.s hidden_size 16 differs from the teacher.s 32.*--student_init random"):
        init_from_teacher_layers(_bert(2, hidden=16), _bert(4), [2, 4])


def test_general_distill_from_teacher_layers_records_the_source(tmp_path, bert_tokenizer, shared_data):
    """general_distill.py --student_init teacher_layers: the output starts from the teacher's layers (its
    config says so), also for TinyBERT with depths that do not divide (4 -> 3, nearest uniform map)."""
    from pipelines.scripts import general_distill
    from pregenerated_writer import real_paragraphs, write_pregenerated
    from safetensors.torch import load_file

    teacher = make_tiny_model_dir(tmp_path / "teacher", num_layers=4, hidden=64, heads=4, tokenizer=bert_tokenizer)
    data = write_pregenerated(tmp_path / "data", bert_tokenizer, real_paragraphs(shared_data, 8), epochs=1,
                              max_seq_len=32)
    cfg = tmp_path / "student3.json"
    cfg.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 4,
                               "intermediate_size": 128}))
    out = tmp_path / "out"
    general_distill.main(["--pregenerated_data", str(data), "--teacher_model", teacher, "--student_model", str(cfg),
                          "--output_dir", str(out), "--student_init", "teacher_layers", "--init_layers", "1,3,4",
                          "--train_batch_size", "4", "--max_steps", "1", "--learning_rate", "0"])
    saved = json.load(open(out / "config.json"))
    assert saved["student_init"]["layers"] == [1, 3, 4]
    # learning rate 0: the saved weights are exactly the copied teacher layers
    t_state, s_state = load_file(os.path.join(teacher, "model.safetensors")), load_file(out / "model.safetensors")
    key = "encoder.layer.{}.attention.self.query.weight"
    for s_layer, t_layer in enumerate([1, 3, 4]):
        assert torch.equal(s_state[key.format(s_layer)], t_state[key.format(t_layer - 1)])
    with pytest.raises(UserError, match="--init_layers needs --student_init teacher_layers"):
        general_distill.main(["--pregenerated_data", str(data), "--teacher_model", teacher, "--student_model",
                              str(cfg), "--output_dir", str(tmp_path / "o2"), "--init_layers", "1,3,4"])


def test_tinybert_layer_map_for_any_depth():
    from tinybert.intermediate import TinyBertIntermediateObjective
    from tinybert.losses import hidden_mse

    teacher, student = _bert(6, seed=0).eval(), _bert(4, seed=1).eval()
    assert TinyBertIntermediateObjective(teacher, student).teacher_layers == [1, 2, 4, 5]  # teacher 2, 3, 5, 6
    objective = TinyBertIntermediateObjective(teacher, student, layer_map="1,2,3,6")
    assert objective.teacher_layers == [0, 1, 2, 5]
    ids = torch.randint(1, 99, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    with torch.no_grad():
        out = objective(ids, mask)
        s = student(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        t = teacher(ids, attention_mask=mask, output_hidden_states=True).hidden_states
        fit = objective.fit_dense
        expected = sum(hidden_mse(fit(s[i + 1]), t[j + 1], mask) for i, j in enumerate([0, 1, 2, 5]))
    assert torch.allclose(out["hidden"], expected, atol=1e-6)
    assert out["loss"] == pytest.approx(float(out["embedding"] + out["hidden"] + out["attention"]), rel=1e-6)
    with pytest.raises(UserError, match="--layer_map 1,2: 2 layers given, the student has 4"):
        TinyBertIntermediateObjective(teacher, student, layer_map="1,2")
