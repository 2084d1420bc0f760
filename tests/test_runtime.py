"""The shared training runtime: exact resume after a real SIGKILL, DDP equivalence, CLI behaviour."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from kdcore.trainer import epoch_indices, linear_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "toy_train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
COMMON = ["--num_examples", "36", "--train_batch_size", "4", "--gradient_accumulation_steps", "2",
          "--num_train_epochs", "3", "--save_steps", "2", "--logging_steps", "1"]


def _run(args, **kw):
    return subprocess.run([sys.executable, TOY, *args], env=ENV, capture_output=True, text=True, timeout=300, **kw)


def _weights(folder, name="toy.safetensors"):
    return load_file(os.path.join(folder, name))


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    straight = tmp_path / "straight"
    r = _run(["--output_dir", str(straight), *COMMON])
    assert r.returncode == 0, r.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, TOY, "--output_dir", str(killed), *COMMON, "--sleep_per_batch", "0.05"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "checkpoint-6" / "training_state.json").exists():
        assert proc.poll() is None, "run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.3)  # kill in the middle of later steps, not right at a checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "toy.safetensors").exists(), "the killed run should not have finished"

    r = _run(["--output_dir", str(killed), *COMMON])  # resumes automatically from the newest checkpoint
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr
    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    # the log reads as one run: steps 1..15 once each (5 steps per epoch: 9 batches, accumulation 2)
    steps = [json.loads(line)["step"] for line in open(killed / "train_log.jsonl")]
    assert steps == list(range(1, 16))


def test_two_process_ddp_matches_one_process_with_same_global_batch(tmp_path):
    pytest.importorskip("torch.distributed.run")
    base = ["--num_examples", "32", "--num_train_epochs", "2", "--dropout", "0", "--logging_steps", "1"]
    one = tmp_path / "one"
    r = _run(["--output_dir", str(one), "--train_batch_size", "8", *base])
    assert r.returncode == 0, r.stderr[-2000:]
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", "29533", TOY, "--output_dir", str(two), "--train_batch_size", "4", *base],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rank0, rank1 = _weights(two, "rank0.safetensors"), _weights(two, "rank1.safetensors")
    single = _weights(one)
    max_diff = 0.0
    for k in single:
        assert torch.equal(rank0[k], rank1[k]), f"ranks disagree on {k}"
        max_diff = max(max_diff, (rank0[k] - single[k]).abs().max().item())
    assert max_diff < 1e-5, max_diff
    print(f"max |2-process - 1-process| = {max_diff:.2e}")


def test_data_order_matches_distributed_sampler():
    from torch.utils.data import DistributedSampler

    for world in (1, 2, 3):
        for rank in range(world):
            s = DistributedSampler(range(10), num_replicas=world, rank=rank, shuffle=True, seed=7)
            s.set_epoch(3)
            assert epoch_indices(10, 3, 7, rank, world) == list(s)


def test_linear_schedule_warmup_then_decay():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_schedule(opt, num_warmup_steps=4, num_training_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])


@pytest.mark.parametrize("extra,needle", [
    (["--fp16"], "--fp16 needs a CUDA GPU"),
    (["--config", "/nonexistent.json"], "no such file"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, extra, needle):
    r = _run(["--output_dir", str(tmp_path / "o"), *extra])
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr


def test_config_file_sets_defaults_and_command_line_wins(tmp_path):
    from kdcore.cli import UserError
    sys.path.insert(0, os.path.join(REPO, "tests"))
    import argparse
    from kdcore.cli import parse_args
    from kdcore.runtime import add_runtime_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 0.123\nseed: 5\n")
    parser = argparse.ArgumentParser()
    add_runtime_args(parser)
    args = parse_args(parser, ["--config", str(cfg), "--output_dir", "x", "--seed", "9"])
    assert args.learning_rate == 0.123 and args.seed == 9
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"learnin_rate": 1}))
    with pytest.raises(UserError, match="learnin_rate"):
        parse_args(argparse.ArgumentParser(), ["--config", str(bad)])


def test_unwritable_output_dir_exits_2(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "file").write_text("")
    r = _run(["--output_dir", str(ro / "file" / "sub")])
    assert r.returncode == 2 and "cannot write" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_follows_its_switch():
    """keep_freed_memory_for_reuse() applies glibc's settings unless KD_KEEP_FREED_MEMORY=0 (fresh interpreters:
    the setting is process-wide). Its effect on page faults is measured in the README, not asserted here: in an
    isolated allocate-and-free loop it varies between processes."""
    code = "from kdcore.runtime import keep_freed_memory_for_reuse as k; print(k())"
    for switch, expected in (("1", "True"), ("0", "False")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                             env={**os.environ, "KD_KEEP_FREED_MEMORY": switch})
        assert out.stdout.split() == [expected]
