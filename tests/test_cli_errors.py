"""Bad input at the command line: one clear line on stderr, exit code 2, no traceback, no partial output."""
import json
import os
import subprocess
import sys

import pytest

from pregenerated_writer import real_paragraphs, write_pregenerated

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def pregen(tmp_path_factory, bert_tokenizer, shared_data):
    return write_pregenerated(tmp_path_factory.mktemp("pregen"), bert_tokenizer, real_paragraphs(shared_data, 8),
                              epochs=1, max_seq_len=32)


@pytest.fixture(scope="module")
def other_vocab_student(tmp_path_factory):
    from conftest import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("other_vocab"))  # vocab of 99, not the teacher's 30522


def _bad_cases(tmp_path, packaged_teacher, other_vocab_student):
    bad_heads = tmp_path / "bad_heads.json"
    bad_heads.write_text(json.dumps({"hidden_size": 100, "num_hidden_layers": 2, "num_attention_heads": 12}))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    student = os.path.join(REPO, "configs", "minilm_L3xH384.json")
    return {
        "missing teacher": (["--teacher_model", str(tmp_path / "no_such_model"), "--student_model", student],
                            "no such file or folder"),
        "heads": (["--teacher_model", packaged_teacher, "--student_model", str(bad_heads)],
                  "hidden_size 100 is not divisible by num_attention_heads 12"),
        "vocab": (["--teacher_model", packaged_teacher, "--student_model", other_vocab_student, "--continue_train"],
                  "does not match the teacher's 30522"),
        "unwritable": (["--teacher_model", packaged_teacher, "--student_model", student,
                        "--output_dir", str(blocker / "out")], "cannot write there"),
        "narrow teacher-layer init": (["--teacher_model", packaged_teacher, "--student_model",
                                       os.path.join(REPO, "configs", "tinybert_4L_312D.json"), "--student_init",
                                       "teacher_layers"], "hidden_size 312 differs from the teacher's 384"),
        "init layer out of range": (["--teacher_model", packaged_teacher, "--student_model", student,
                                     "--student_init", "teacher_layers", "--init_layers", "2,4,7"],
                                    "--init_layers 2,4,7: layer 7 does not exist; the teacher has layers 1..6"),
    }


@pytest.mark.parametrize("case", ["missing teacher", "heads", "vocab", "unwritable", "narrow teacher-layer init",
                                  "init layer out of range"])
def test_general_distill_bad_input(case, tmp_path, pregen, packaged_teacher, other_vocab_student):
    args, needle = _bad_cases(tmp_path, packaged_teacher, other_vocab_student)[case]
    out = tmp_path / "out"
    if "--output_dir" not in args:
        args = args + ["--output_dir", str(out)]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "general_distill.py"), "--pregenerated_data", pregen,
                           "--distill_method", "minilmv2", "--max_steps", "1", *args],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("general_distill.py: error: ") and needle in last, last
    assert not (out / "model.safetensors").exists()


def test_a_failed_run_removes_only_the_output_folders_it_made_that_hold_nothing_of_value(tmp_path):
    import argparse

    from kdcore import cli

    had = tmp_path / "had"
    had.mkdir()
    args = argparse.Namespace(output_dir=str(had), cache_dir=str(tmp_path / "new" / "cache"), output_file=None,
                              output_json=None)
    cli.note_new_output_dirs(args)
    (tmp_path / "new" / "cache").mkdir(parents=True)
    (tmp_path / "new" / "cache" / "train_log.jsonl").write_text("{}\n")  # a log alone is of no value
    cli.remove_new_output_dirs_without_value()
    assert had.is_dir() and not (tmp_path / "new").exists()  # the user's folder stays; the run's whole chain goes
    args.cache_dir = str(tmp_path / "kept")
    cli.note_new_output_dirs(args)
    (tmp_path / "kept" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "kept" / "checkpoint-2" / "model.safetensors").write_bytes(b"weights")
    cli.remove_new_output_dirs_without_value()
    assert (tmp_path / "kept" / "checkpoint-2" / "model.safetensors").is_file()  # a checkpoint is kept
