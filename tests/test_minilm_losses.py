"""MiniLM v1 / v2 losses against slow per-example, per-head loops written straight from the papers' formulas."""
import math

import pytest
import torch

from minilm.losses import (
    attention_distribution_kl,
    masked_row_kl,
    pairwise_row_kl,
    scaled_dot_logits,
    self_attention_relation_kl,
    split_relation_heads,
    value_relation_kl,
)

LENGTHS = (7, 4, 1, 7)  # includes a one-token example and unpadded ones


def _mask(lengths=LENGTHS):
    T = max(lengths)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    return mask


def _rand(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2.0


# ---- slow references: plain loops over examples, heads and real query rows, float64, no masking tricks ----------
def _kl_row(teacher_row, student_row):
    p = torch.softmax(teacher_row, dim=0)
    return sum(p[j] * (math.log(p[j]) - torch.log_softmax(student_row, dim=0)[j]) for j in range(len(p)))


def slow_pairwise_kl(t_a, t_b, s_a, s_b, lengths):
    """sum_b sum_h sum_{i<n_b} KL(softmax(t_a t_b^T / sqrt d_t)[i, :n_b] || same for student) / (H * N)."""
    total, H = 0.0, t_a.size(1)
    for b, n in enumerate(lengths):
        for h in range(H):
            dt, ds = t_a.size(-1), s_a.size(-1)
            for i in range(n):
                t_row = torch.stack([t_a[b, h, i].double() @ t_b[b, h, j].double() / math.sqrt(dt) for j in range(n)])
                s_row = torch.stack([s_a[b, h, i].double() @ s_b[b, h, j].double() / math.sqrt(ds) for j in range(n)])
                total += float(_kl_row(t_row, s_row))
    return total / (H * sum(lengths))


def slow_relation_kl(t_states, s_states, lengths, R):
    """MiniLMv2 formula on (B, T, D) states: relation head r = dims [r*D/R, (r+1)*D/R) of each token vector."""
    total = 0.0
    for b, n in enumerate(lengths):
        for r in range(R):
            dt, ds = t_states.size(-1) // R, s_states.size(-1) // R
            for i in range(n):
                ti = t_states[b, i, r * dt:(r + 1) * dt].double()
                si = s_states[b, i, r * ds:(r + 1) * ds].double()
                t_row = torch.stack([ti @ t_states[b, j, r * dt:(r + 1) * dt].double() / math.sqrt(dt) for j in range(n)])
                s_row = torch.stack([si @ s_states[b, j, r * ds:(r + 1) * ds].double() / math.sqrt(ds) for j in range(n)])
                total += float(_kl_row(t_row, s_row))
    return total / (R * sum(lengths))


def _per_head(x, H):
    b, t, d = x.shape
    return x.view(b, t, H, d // H).transpose(1, 2)


# ---- v1 --------------------------------------------------------------------------------------------------------
def test_attention_distribution_kl_matches_slow_loop():
    B, T, H = len(LENGTHS), max(LENGTHS), 3
    tq, tk = _rand(B, H, T, 8, seed=1), _rand(B, H, T, 8, seed=2)
    sq, sk = _rand(B, H, T, 4, seed=3), _rand(B, H, T, 4, seed=4)  # different head sizes
    got = attention_distribution_kl(tq, tk, sq, sk, _mask())
    want = slow_pairwise_kl(tq, tk, sq, sk, LENGTHS)
    assert got.item() == pytest.approx(want, rel=1e-5)
    assert want > 0.01


def test_value_relation_kl_matches_slow_loop():
    B, T, H = len(LENGTHS), max(LENGTHS), 3
    tv, sv = _rand(B, H, T, 8, seed=5), _rand(B, H, T, 4, seed=6)
    got = value_relation_kl(tv, sv, _mask())
    want = slow_pairwise_kl(tv, tv, sv, sv, LENGTHS)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_v1_needs_equal_head_counts():
    t, s = _rand(2, 4, 5, 8, seed=0), _rand(2, 2, 5, 8, seed=1)
    with pytest.raises(ValueError, match="equal head counts"):
        value_relation_kl(t, s, torch.ones(2, 5))


def test_kl_is_zero_for_identical_distributions_and_positive_otherwise():
    q, k = _rand(2, 2, 5, 8, seed=7), _rand(2, 2, 5, 8, seed=8)
    mask = _mask((5, 3))
    assert attention_distribution_kl(q, k, q, k, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_distribution_kl(q, k, q * 0.5, k, mask).item() > 1e-3


# ---- v2 --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("R", [1, 4, 6])
def test_relation_kl_matches_slow_loop_with_different_widths_and_heads(R):
    B, T = len(LENGTHS), max(LENGTHS)
    teacher = _rand(B, T, 24, seed=10)
    student = _rand(B, T, 12, seed=11)
    got = self_attention_relation_kl(_per_head(teacher, 4), _per_head(student, 3), _mask(), R)  # 4 vs 3 heads
    want = slow_relation_kl(teacher, student, LENGTHS, R)
    assert got.item() == pytest.approx(want, rel=1e-5)
    # (B, T, D) input gives the same value as per-head input
    assert self_attention_relation_kl(teacher, student, _mask(), R).item() == pytest.approx(got.item(), rel=1e-6)


def test_relation_heads_ignore_model_head_boundaries():
    x = torch.arange(2 * 3 * 12, dtype=torch.float32).view(2, 3, 12)
    per_head = _per_head(x, 4)  # 4 heads of 3
    r = split_relation_heads(per_head, 2)  # 2 relation heads of 6: head 0 = dims 0..5 = model heads 0 and 1
    assert torch.equal(r[:, 0], x[:, :, :6]) and torch.equal(r[:, 1], x[:, :, 6:])
    with pytest.raises(ValueError, match="does not divide"):
        split_relation_heads(x, 5)


# ---- padding ---------------------------------------------------------------------------------------------------
def test_losses_ignore_content_of_padded_positions():
    B, T, H = len(LENGTHS), max(LENGTHS), 2
    mask = _mask()
    pad = ~mask.bool()
    tensors = [_rand(B, H, T, 6, seed=s) for s in range(20, 26)]

    def junk(x, seed):  # replace every padded position with large random values
        y = x.clone()
        noise = _rand(*x.shape, seed=seed) * 1e3
        y[pad[:, None, :, None].expand_as(y)] = noise[pad[:, None, :, None].expand_as(y)]
        return y

    def all_losses(tq, tk, tv, sq, sk, sv):
        return torch.stack([
            attention_distribution_kl(tq, tk, sq, sk, mask),
            value_relation_kl(tv, sv, mask),
            self_attention_relation_kl(tq, sq, mask, 3),
        ])

    clean = all_losses(*tensors)
    dirty = all_losses(*[junk(x, 100 + i) for i, x in enumerate(tensors)])
    torch.testing.assert_close(clean, dirty, rtol=1e-6, atol=1e-7)


def test_batch_loss_is_token_weighted_mean_of_unpadded_examples():
    B, T = len(LENGTHS), max(LENGTHS)
    t, s = _rand(B, T, 12, seed=30), _rand(B, T, 8, seed=31)
    batch = self_attention_relation_kl(t, s, _mask(), 4)
    alone = [self_attention_relation_kl(t[b:b + 1, :n], s[b:b + 1, :n], torch.ones(1, n), 4) * n
             for b, n in enumerate(LENGTHS)]
    assert batch.item() == pytest.approx(float(sum(alone)) / sum(LENGTHS), rel=1e-5)


def test_fully_padded_rows_give_no_nan_in_value_or_gradient():
    mask = _mask((5, 0, 3))  # the second example has no real token at all
    tq, tk, tv = (_rand(3, 2, 5, 4, seed=s) for s in (40, 41, 42))
    sq, sk, sv = (_rand(3, 2, 5, 4, seed=s).requires_grad_() for s in (43, 44, 45))
    loss = (attention_distribution_kl(tq, tk, sq, sk, mask) + value_relation_kl(tv, sv, mask)
            + self_attention_relation_kl(tq, sq, mask, 4))
    loss.backward()
    assert torch.isfinite(loss)
    for g in (sq.grad, sk.grad, sv.grad):
        assert torch.isfinite(g).all()
        assert g[1].abs().max() == 0  # the empty example contributes nothing
    # an all-padding batch is 0, not NaN
    empty = torch.zeros(2, 5, dtype=torch.long)
    assert self_attention_relation_kl(_rand(2, 5, 8, seed=1), _rand(2, 5, 8, seed=2), empty, 2).item() == 0.0


def test_fp32_under_autocast():
    mask = _mask((6, 4))
    t = _rand(2, 6, 16, seed=50)
    s = _rand(2, 6, 16, seed=51).requires_grad_()
    ref = self_attention_relation_kl(t, s, mask, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = scaled_dot_logits(split_relation_heads(s, 4), split_relation_heads(s, 4), mask)
        under = self_attention_relation_kl(t, s, mask, 4)
    assert logits.dtype == torch.float32 and under.dtype == torch.float32
    assert under.item() == pytest.approx(ref.item(), rel=1e-6)  # bf16 matmuls would be off by ~1e-3


def test_masked_row_kl_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="relation shapes differ"):
        masked_row_kl(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3), torch.ones(1, 3))


# ---- chunked value + analytic gradient (pairwise_row_kl) against the autograd reference ---------------------------
def _reference_kl(t_a, t_b, s_a, s_b, mask):
    """The unchunked formula with autograd: every (B, H, T, T) tensor whole."""
    return masked_row_kl(scaled_dot_logits(t_a, t_b, mask), scaled_dot_logits(s_a, s_b, mask), mask)


@pytest.mark.parametrize("max_elements", [1, 7 * 7 * 2, 7 * 7 * 4 * 3, 2**24])  # 1 example x 1 head ... everything
@pytest.mark.parametrize("relation", [True, False])
@pytest.mark.parametrize("lengths", [LENGTHS, (7, 7, 7, 7)])  # padded, and none (the masking passes are skipped)
def test_chunked_kl_equals_reference_in_value_and_gradient(max_elements, relation, lengths):
    B, T, H = len(lengths), max(lengths), 6
    mask = _mask(lengths)
    t_a, t_b = _rand(B, H, T, 8, seed=60), _rand(B, H, T, 8, seed=61)
    s_a0, s_b0 = _rand(B, H, T, 4, seed=62), _rand(B, H, T, 4, seed=63)
    if relation:  # MiniLMv2 / value relation: a = b, the gradient reaches one tensor through both sides
        t_b, s_b0 = t_a, s_a0
    results = []
    for fn in (_reference_kl, lambda *x: pairwise_row_kl(*x, max_chunk_elements=max_elements)):
        s_a = s_a0.clone().requires_grad_()
        s_b = s_a if relation else s_b0.clone().requires_grad_()
        loss = fn(t_a, t_b, s_a, s_b, mask)
        (loss * 3.0).backward()  # a non-unit upstream gradient
        results.append((loss.detach(), s_a.grad, s_b.grad))
    (ref, ref_ga, ref_gb), (got, got_ga, got_gb) = results
    assert ref.item() > 0.01
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_ga, ref_ga, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(got_gb, ref_gb, rtol=1e-6, atol=1e-7)
    assert ref_ga.abs().max() > 1e-3


def test_chunked_relation_kl_in_bf16_autocast_matches_reference_on_the_same_inputs():
    mask = _mask((6, 4, 0))
    t = _rand(3, 6, 16, seed=70).bfloat16()
    s_ref = _rand(3, 6, 16, seed=71).bfloat16().requires_grad_()
    s_new = s_ref.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tr, sr = split_relation_heads(t, 4), split_relation_heads(s_ref, 4)
        ref = _reference_kl(tr, tr, sr, sr, mask)
        got = self_attention_relation_kl(t, s_new, mask, 4, max_chunk_elements=36)
    ref.backward()
    got.backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-7)
    assert s_new.grad.dtype == torch.bfloat16
    torch.testing.assert_close(s_new.grad.float(), s_ref.grad.float(), rtol=1e-2, atol=1e-6)  # bf16 rounding of the gradient


def test_chunked_kl_refuses_a_teacher_with_gradient():
    x = _rand(1, 2, 3, 4, seed=0).requires_grad_()
    with pytest.raises(ValueError, match="no gradient"):
        pairwise_row_kl(x, x, x.detach(), x.detach(), torch.ones(1, 3))
