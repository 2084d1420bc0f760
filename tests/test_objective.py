"""The teacher contract (kdcore.objective.DistillObjective), the method table (kdcore.distill) and the checkpoint
module (kdcore.checkpoint), through general distillation runs on tiny random teachers."""
import json
import os
import shutil
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModel

from conftest import REPO, make_tiny_model_dir
from kdcore.checkpoint import list_checkpoints, verify_checkpoint
from kdcore.cli import UserError, parse_args
from kdcore.modeling import build_student
from minilm.v2 import MiniLMv2Objective
from pregenerated_writer import real_paragraphs, write_pregenerated
from tinybert.intermediate import TinyBertIntermediateObjective

sys.path.insert(0, REPO)
from pipelines.scripts import general_distill  # noqa: E402


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory, bert_tokenizer):
    return make_tiny_model_dir(tmp_path_factory.mktemp("teacher"), num_layers=2, hidden=32, heads=4,
                               tokenizer=bert_tokenizer)


@pytest.fixture(scope="module")
def student_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("student") / "student.json"
    path.write_text(json.dumps({"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
                                "intermediate_size": 32}))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory, bert_tokenizer, shared_data):
    return write_pregenerated(tmp_path_factory.mktemp("pregen"), bert_tokenizer, real_paragraphs(shared_data, 12),
                              max_seq_len=24)


def test_teacher_is_outside_the_module_tree_but_moves_with_it(tiny_teacher, student_config):
    teacher = AutoModel.from_pretrained(tiny_teacher)
    student = build_student(student_config, teacher.config)
    objective = TinyBertIntermediateObjective(teacher, student)
    teacher_params = {id(p) for p in teacher.parameters()}
    assert not teacher_params & {id(p) for p in objective.parameters()}
    assert all(not k.startswith("teacher") for k in objective.state_dict())
    assert {k.split(".")[0] for k in objective.state_dict()} == {"student", "fit_dense"}
    objective.train()
    assert student.training and not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    objective.to(torch.float64)
    assert next(teacher.parameters()).dtype == torch.float64 and objective.fit_dense.weight.dtype == torch.float64
    assert set(objective.extra_modules()) == {"fit_dense"}


def test_an_option_of_another_method_is_one_clear_error(tmp_path, tiny_teacher, student_config, data):
    argv = ["--pregenerated_data", data, "--teacher_model", tiny_teacher, "--student_model", student_config,
            "--output_dir", str(tmp_path / "out")]
    with pytest.raises(UserError, match="--teacher_layer is for --distill_method minilm/minilmv2, not tinybert"):
        general_distill.main([*argv, "--teacher_layer", "1"])
    with pytest.raises(UserError, match="--num_relation_heads is for --distill_method minilmv2/embedding, not minilm"):
        general_distill.main([*argv, "--distill_method", "minilm", "--num_relation_heads", "8"])
    # the table row builds its objective from the parsed options
    args = parse_args(general_distill.build_parser(),
                      [*argv, "--distill_method", "minilmv2", "--num_relation_heads", "8", "--kk_weight", "0.5"])
    teacher = AutoModel.from_pretrained(tiny_teacher)
    objective = general_distill.METHODS["minilmv2"].build(args, teacher, build_student(student_config, teacher.config))
    assert isinstance(objective, MiniLMv2Objective) and objective.num_relation_heads == 8
    assert objective.weights == {"qq": 1.0, "kk": 0.5, "vv": 1.0}


def _weights(folder):
    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.mark.parametrize("method", ["minilmv2", "tinybert"])
def test_resumed_distillation_ends_bit_identical_and_checkpoints_hold_no_teacher(tmp_path, tiny_teacher,
                                                                                 student_config, data, method):
    common = ["--pregenerated_data", data, "--teacher_model", tiny_teacher, "--student_model", student_config,
              "--distill_method", method, "--train_batch_size", "4", "--max_steps", "4", "--save_steps", "2",
              "--learning_rate", "1e-3", "--warmup_proportion", "0"]
    if method == "minilmv2":
        common += ["--num_relation_heads", "8"]
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    general_distill.main([*common, "--output_dir", full])
    checkpoints = list_checkpoints(full)
    assert [os.path.basename(c) for c in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    state = load_file(os.path.join(checkpoints[0], "objective_state.safetensors"))
    assert state and all(k.startswith(("student.", "fit_dense.")) for k in state)
    assert any(k.startswith("fit_dense.") for k in state) == (method == "tinybert")
    assert verify_checkpoint(checkpoints[0])["global_step"] == 2

    os.makedirs(resumed)
    shutil.copytree(checkpoints[0], os.path.join(resumed, "checkpoint-2"))
    result = general_distill.main([*common, "--output_dir", resumed])
    assert result.global_step == 4
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if method == "tinybert":
        fa, fb = (load_file(os.path.join(d, "fit_dense.safetensors")) for d in (full, resumed))
        assert all(torch.equal(fa[k], fb[k]) for k in fa)
    model, info = AutoModel.from_pretrained(resumed, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]


def test_an_incomplete_checkpoint_is_named_in_one_line(tmp_path):
    folder = tmp_path / "checkpoint-3"
    folder.mkdir()
    (folder / "training_state.json").write_text(json.dumps({"global_step": 3}))
    (folder / "optimizer.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"checkpoint-3: not a complete checkpoint \(no objective_state.safetensors, "
                                        r"rng_state.safetensors\)"):
        verify_checkpoint(str(folder))
