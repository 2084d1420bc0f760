"""Multi-node-safe resume: the remaining-samples order and the byte broadcast (unit level)."""
import pytest

from kdcore.multinode import broadcast_bytes, remaining_order
from kdcore.runtime import epoch_indices


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (12, 4), (7, 2)])
def test_no_consumption_is_distributed_samplers_split(n, world):
    for rank in range(world):
        assert remaining_order(n, 3, 42, rank, world) == epoch_indices(n, 3, 42, rank, world)


@pytest.mark.parametrize("n,world,batch", [(23, 2, 3), (24, 4, 2), (9, 1, 4)])
def test_same_world_size_continues_each_rank_exactly(n, world, batch):
    for b in range(0, -(-n // world) // batch + 1):
        consumed = b * batch * world
        for rank in range(world):
            assert remaining_order(n, 1, 7, rank, world, consumed) == epoch_indices(n, 1, 7, rank, world)[b * batch:]


@pytest.mark.parametrize("old,new", [(2, 1), (1, 2), (2, 3), (4, 2)])
def test_changed_world_size_shares_out_the_rest_of_the_epoch(old, new):
    n, batch, b = 29, 3, 2
    consumed = b * batch * old
    used = [i for r in range(old) for i in epoch_indices(n, 0, 5, r, old)[: b * batch]]
    rest = [remaining_order(n, 0, 5, r, new, consumed) for r in range(new)]
    assert len({len(x) for x in rest}) == 1  # every rank gets as many samples (padding), so batches stay in step
    together = used + [i for x in rest for i in x]
    assert set(together) == set(range(n))  # nothing skipped
    assert len(together) - n < new  # repeated only to pad the last round to the world size


def test_broadcast_bytes_outside_a_process_group_is_identity():
    assert broadcast_bytes(b"abc") == b"abc" and broadcast_bytes(None) == b""
