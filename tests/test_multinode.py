"""Multi-node-safe resume: the data order after samples consumed, the byte broadcast, and real gloo runs killed
and resumed with another number of processes."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from kdcore.runtime import broadcast_bytes
from kdcore.trainer import epoch_indices


@pytest.mark.parametrize("n,world,batch", [(23, 2, 3), (24, 4, 2), (9, 1, 4), (10, 3, 1)])
def test_same_world_size_continues_each_rank_exactly(n, world, batch):
    for b in range(0, -(-n // world) // batch + 1):
        consumed = b * batch * world
        for rank in range(world):
            assert epoch_indices(n, 1, 7, rank, world, consumed=consumed) == epoch_indices(n, 1, 7, rank, world)[b * batch:]


@pytest.mark.parametrize("old,new", [(2, 1), (1, 2), (2, 3), (4, 2)])
def test_changed_world_size_shares_out_the_rest_of_the_epoch(old, new):
    n, batch, b = 29, 3, 2
    consumed = b * batch * old
    used = [i for r in range(old) for i in epoch_indices(n, 0, 5, r, old)[: b * batch]]
    rest = [epoch_indices(n, 0, 5, r, new, consumed=consumed) for r in range(new)]
    assert len({len(x) for x in rest}) == 1  # every rank gets as many samples (padding), so batches stay in step
    together = used + [i for x in rest for i in x]
    assert set(together) == set(range(n))  # nothing skipped
    assert len(together) - n < new  # repeated only to pad the last round to the world size


def padded_tokens(order, lengths, group):
    return sum(max(lengths[i] for i in order[g:g + group]) * len(order[g:g + group]) for g in range(0, len(order), group))


@pytest.mark.parametrize("world,batch", [(1, 8), (2, 4), (3, 5)])
def test_length_grouped_order_pads_less_and_resumes_exactly(world, batch):
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(3, 128, (1000,), generator=gen).tolist()
    group = world * batch
    grouped = epoch_indices(1000, 2, 9, 0, 1, lengths=lengths, group=group)
    plain = epoch_indices(1000, 2, 9, 0, 1)
    assert sorted(grouped) == list(range(1000))  # every example once an epoch
    assert grouped != epoch_indices(1000, 3, 9, 0, 1, lengths=lengths, group=group)  # reshuffled each epoch
    assert padded_tokens(grouped, lengths, group) < 0.7 * padded_tokens(plain, lengths, group)
    # global batches are not sorted among themselves: the first and last thirds have similar mean lengths
    firsts = [lengths[i] for i in grouped[:333]]
    lasts = [lengths[i] for i in grouped[-333:]]
    assert abs(sum(firsts) / 333 - sum(lasts) / 333) < 15
    for b in range(0, 1000 // group + 1, 7):  # a resumed rank continues exactly where it stopped
        for rank in range(world):
            full = epoch_indices(1000, 2, 9, rank, world, lengths=lengths, group=group)
            assert epoch_indices(1000, 2, 9, rank, world, consumed=b * group, lengths=lengths, group=group) \
                == full[b * batch:]


def test_broadcast_bytes_outside_a_process_group_is_identity():
    assert broadcast_bytes(b"abc") == b"abc" and broadcast_bytes(None) == b""


# ---- real processes: 2 gloo ranks killed, resumed with 1, killed, resumed with 2 -------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(REPO, "tests", "toy_train.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _run(nproc, out, tag, port, kill_at_forward=0):
    args = [TOY, "--output_dir", str(out), "--num_examples", "36", "--train_batch_size", "4", "--max_steps", "12",
            "--save_steps", "2", "--logging_steps", "1", "--ddp_timeout", "120", "--sample_log", str(out / f"samples_{tag}"),
            "--kill_at_forward", str(kill_at_forward)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port), *args]
    r = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert (r.returncode != 0) == bool(kill_at_forward), r.stderr[-3000:]
    return r.stderr


def _samples(out, tag, rank, first):
    lines = open(out / f"samples_{tag}.rank{rank}").read().split()
    assert len(lines) >= first
    return [int(x) for x in lines[:first]]


def test_resume_across_world_sizes_by_samples_consumed(tmp_path):
    pytest.importorskip("torch.distributed.run")
    out = tmp_path / "run"
    # 2 processes x 4 per batch: 5 steps per epoch of 36 examples; both SIGKILLed in step 5, after checkpoint-4
    # (32 samples consumed). Under DDP the first forward is the trainer's probe of what the loss reaches, so the
    # forward of step 5 is the 6th.
    _run(2, out, "a", 29541, kill_at_forward=6)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    # 1 process: finishes epoch 0 with the 4 samples left (step 5), then 9 steps per epoch; killed in step 9
    err = _run(1, out, "b", 0, kill_at_forward=5)
    assert "resumed from" in err and "checkpoint-4" in err and "saved by 2 processes, resuming with 1" in err
    # 2 processes again: the 24 samples left of epoch 1 (steps 9-11), then epoch 2 until step 12
    err = _run(2, out, "c", 29542)
    assert "checkpoint-8" in err and "saved by 1 processes, resuming with 2" in err

    epoch0 = _samples(out, "a", 0, 16) + _samples(out, "a", 1, 16) + _samples(out, "b", 0, 4)
    assert sorted(epoch0) == list(range(36))  # every example once: nothing repeated or skipped
    epoch1 = _samples(out, "b", 0, 4 + 12)[4:] + _samples(out, "c", 0, 12) + _samples(out, "c", 1, 12)
    assert sorted(epoch1) == list(range(36))
    steps = [json.loads(line)["step"] for line in open(out / "train_log.jsonl")]
    assert steps == list(range(1, 13))
    rank0, rank1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
