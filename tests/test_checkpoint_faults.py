"""Damaged state is detected, not reused: a kill at every rename of a checkpoint save, a damaged newest
checkpoint, a torn log line, temporary leftovers, Ctrl-C. Every interrupted run, rerun with the same command,
ends bit-identical to an uninterrupted one."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from forked import run_forked

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "toy_train.py")
FAULT = os.path.join(REPO, "tests", "fault_train.py")
# 9 batches of 4 per epoch, accumulation 2: 5 steps per epoch, 15 in all; a checkpoint every 2 steps.
COMMON = ["--num_examples", "36", "--train_batch_size", "4", "--gradient_accumulation_steps", "2",
          "--num_train_epochs", "3", "--save_steps", "2", "--logging_steps", "1"]
TEMP_NAMES = (".tmp", ".old", ".save-tmp")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted run (all its checkpoints kept)."""
    out = tmp_path_factory.mktemp("straight")
    code, _, err = run_forked(TOY, ["--output_dir", str(out), *COMMON])
    assert code == 0, err[-3000:]
    return out


def _same_weights(a, b):
    wa, wb = load_file(os.path.join(a, "toy.safetensors")), load_file(os.path.join(b, "toy.safetensors"))
    assert wa.keys() == wb.keys()
    return all(torch.equal(wa[k], wb[k]) for k in wa)


def _resume_and_compare(out, straight):
    code, _, err = run_forked(TOY, ["--output_dir", str(out), *COMMON])
    assert code == 0, err[-3000:]
    assert _same_weights(out, straight), "the resumed run differs from the uninterrupted one"
    steps = [json.loads(line)["step"] for line in open(out / "train_log.jsonl")]
    assert steps == list(range(1, 16)), steps  # the log reads as one run
    assert not [n for n in os.listdir(out) if n.startswith(".")], os.listdir(out)  # leftovers swept
    return err


def _renames_per_save(tmp_path, extra, straight):
    count = tmp_path / "renames.txt"
    out = tmp_path / "count_run"
    if extra.get("setup"):
        extra["setup"](straight, out)
    code, _, err = run_forked(FAULT, ["--output_dir", str(out), *COMMON, *extra.get("args", [])],
                              env={"KD_FAULT_COUNT": str(count)})
    assert code == 0, err[-3000:]
    return [int(line.split()[1]) for line in count.read_text().splitlines()]


def _copy_checkpoints(straight, out, steps):
    """`out` as an earlier run left it at its last checkpoint in `steps`: those checkpoints and its log."""
    os.makedirs(out, exist_ok=True)
    for s in steps:
        shutil.copytree(straight / f"checkpoint-{s}", out / f"checkpoint-{s}")
    log = [line for line in open(straight / "train_log.jsonl") if json.loads(line)["step"] <= max(steps)]
    (out / "train_log.jsonl").write_text("".join(log))


SCENARIOS = {
    # a fresh run: its second save (checkpoint-4) writes a new folder
    "new checkpoint": {"save": 2},
    # a run resumed from checkpoint-2 next to an existing checkpoint-4: its first save replaces checkpoint-4
    "replaced checkpoint": {"save": 1, "setup": lambda straight, out: _copy_checkpoints(straight, out, (2, 4)),
                            "args": ["--resume_from_checkpoint", "{out}/checkpoint-2"]},
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_kill_at_every_rename_of_a_checkpoint_save_then_resume(scenario, straight, tmp_path):
    spec = dict(SCENARIOS[scenario])
    spec["args"] = [a.replace("{out}", str(tmp_path / "count_run")) for a in spec.get("args", [])]
    renames = _renames_per_save(tmp_path, spec, straight)[spec["save"] - 1]
    assert renames >= (2 if scenario == "replaced checkpoint" else 1)
    # Just before each rename, and just after the last one ("after rename k" is "before rename k+1").
    for k, when in [(k, "before") for k in range(1, renames + 1)] + [(renames, "after")]:
        out = tmp_path / f"kill_{k}_{when}"
        if spec.get("setup"):
            spec["setup"](straight, out)
        args = [a.replace(str(tmp_path / "count_run"), str(out)) for a in spec["args"]]
        code, _, err = run_forked(FAULT, ["--output_dir", str(out), *COMMON, *args],
                                  env={"KD_FAULT_SAVE": str(spec["save"]), "KD_FAULT_RENAME": str(k),
                                       "KD_FAULT_WHEN": when})
        assert code == -signal.SIGKILL, (k, when, code, err[-2000:])
        assert not (out / "toy.safetensors").exists()
        _resume_and_compare(out, straight)  # the same command as an uninterrupted run


def test_damaged_newest_checkpoint_falls_back_and_leftovers_are_swept(straight, tmp_path):
    out = tmp_path / "damaged"
    _copy_checkpoints(straight, out, (2, 4, 6))
    with open(out / "checkpoint-6" / "optimizer.pt", "r+b") as f:
        f.truncate(100)
    log = [line for line in open(straight / "train_log.jsonl") if json.loads(line)["step"] <= 7]
    (out / "train_log.jsonl").write_text("".join(log) + log[-1][: len(log[-1]) // 2])  # torn by a kill
    (out / ".checkpoint-8.tmp-x1y2").mkdir()
    (out / ".checkpoint-8.tmp-x1y2" / "optimizer.pt").write_bytes(b"half")
    (out / ".save-tmp-abc").mkdir()
    (out / ".eval_results.json.k3j4.tmp").write_text("{")
    err = _resume_and_compare(out, straight)
    assert "checkpoint-6: damaged (optimizer.pt has 100 bytes" in err
    assert "resuming from checkpoint-4, the newest good checkpoint" in err
    assert "resumed from" in err and "checkpoint-4 (step 4)" in err


def test_checkpoint_of_another_run_is_refused(straight, tmp_path):
    out = tmp_path / "other"
    _copy_checkpoints(straight, out, (2,))
    code, _, err = run_forked(TOY, ["--output_dir", str(out), *COMMON, "--learning_rate", "0.01"])
    assert code == 2, err[-2000:]
    assert err.strip().splitlines()[-1].endswith(
        "checkpoint-2 belongs to a different run (--learning_rate 0.001 there, 0.01 now); rerun with the same "
        "arguments, use another --output_dir, or pass --resume_from_checkpoint none to start over")


def _logged_steps(log) -> int:
    """The last complete step of a train_log.jsonl being written (0 when none yet)."""
    if not log.exists():
        return 0
    lines = log.read_text().split("\n")[:-1]  # the last piece has no newline yet: maybe half written
    return json.loads(lines[-1])["step"] if lines else 0


def test_ctrl_c_prints_one_line_and_the_rerun_resumes(straight, tmp_path):
    out = tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A shell that starts the tests in the background (`cmd &`) makes them ignore SIGINT, and a Python started that
    # way installs no KeyboardInterrupt handler: give the run the default disposition, as a terminal would.
    proc = subprocess.Popen([sys.executable, TOY, "--output_dir", str(out), *COMMON, "--sleep_per_batch", "0.4"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Signal once step 5 is logged: checkpoint-4 is then complete and at least 10 batches (4 s) remain, however
    # loaded the machine is (the run's own progress is the clock, not a sleep here).
    deadline = time.time() + 240
    while _logged_steps(out / "train_log.jsonl") < 5:
        assert proc.poll() is None, proc.stderr.read()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1].split("\r")[-1]
    assert "interrupted at step" in last, stderr[-2000:]
    step, ckpt = int(last.split("interrupted at step ")[1].split(";")[0]), int(last.rsplit("checkpoint-", 1)[1])
    assert last == (f"toy_train.py: interrupted at step {step}; rerun the same command to resume from "
                    f"checkpoint-{ckpt}")
    assert ckpt == max(int(n.split("-")[1]) for n in os.listdir(out) if n.startswith("checkpoint-"))
    assert 4 <= ckpt <= step < 15
    _resume_and_compare(out, straight)


def test_fp16_with_gradient_scaler_resumes_bit_identical(straight, tmp_path):
    """The fp16 path (float16 autocast + GradScaler, the CUDA recipe) run on CPU: finite losses, the scaler's
    state saved in each checkpoint, and a run resumed from a middle checkpoint ends bit-identical."""
    env = {"KD_FP16_ON_CPU": "1"}
    fp16 = tmp_path / "fp16_straight"
    code, _, err = run_forked(TOY, ["--output_dir", str(fp16), *COMMON, "--fp16"], env=env)
    assert code == 0, err[-3000:]
    log = [json.loads(line) for line in open(fp16 / "train_log.jsonl")]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    state = json.loads((fp16 / "checkpoint-6" / "training_state.json").read_text())
    assert state["scaler"] is not None and state["scaler"]["scale"] > 1  # the scaler ran and was saved
    assert not _same_weights(fp16, straight)  # float16 autocast really ran: not the fp32 result
    resumed = tmp_path / "fp16_resumed"
    _copy_checkpoints(fp16, resumed, (2, 4, 6))
    code, _, err = run_forked(TOY, ["--output_dir", str(resumed), *COMMON, "--fp16"], env=env)
    assert code == 0, err[-3000:]
    assert "resumed from" in err and _same_weights(resumed, fp16)
