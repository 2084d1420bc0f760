"""TinyBERT's attention-score MSE computed from Q and K chunk by chunk (analytic gradient) equals the map-based losses
in value and gradient, with and without padding, for both reductions."""
import pytest
import torch

from kdcore.attention_capture import attention_scores
from tinybert.losses import attention_score_mse, attention_score_mse_from_qk, attention_score_mse_original


def _inputs(seed, b=3, h=4, t=9, d_s=8, d_t=16, pad=True):
    g = torch.Generator().manual_seed(seed)
    q_s, k_s = (torch.randn(b, h, t, d_s, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    q_t, k_t = (torch.randn(b, h, t, d_t, generator=g, dtype=torch.float64) * 2 for _ in range(2))
    mask = torch.ones(b, t, dtype=torch.long)
    if pad:
        mask[0, 6:] = 0
        mask[2, 2:] = 0
    return q_s.float().requires_grad_(), k_s.float().requires_grad_(), q_t.float(), k_t.float(), mask


def _reference(q_s, k_s, q_t, k_t, mask, reduction):
    """The losses on the materialised score maps, in float64 (attention_scores gives -inf at padded keys)."""
    s = attention_scores(q_s.double(), k_s.double(), mask).double()
    t = attention_scores(q_t.double(), k_t.double(), mask).double()
    if reduction == "original":
        return attention_score_mse_original(s, t)
    return attention_score_mse(s, t, mask)


@pytest.mark.parametrize("reduction", ["real_tokens", "original"])
@pytest.mark.parametrize("pad", [True, False])
@pytest.mark.parametrize("chunk_elements", [1, 2 * 9 * 9, 2**20])  # one example of one head, 2 examples, all at once
def test_chunked_form_equals_the_score_maps_in_value_and_gradient(reduction, pad, chunk_elements):
    for seed in range(3):
        q_s, k_s, q_t, k_t, mask = _inputs(seed, pad=pad)
        ours = attention_score_mse_from_qk(q_s, k_s, q_t, k_t, mask, reduction, max_chunk_elements=chunk_elements)
        grads = torch.autograd.grad(ours, (q_s, k_s))
        ref = _reference(q_s, k_s, q_t, k_t, mask, reduction)
        ref_grads = torch.autograd.grad(ref, (q_s, k_s))
        assert ours.dtype == torch.float32
        assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
        for g, r in zip(grads, ref_grads):
            assert torch.allclose(g.double(), r.double(), rtol=1e-4, atol=1e-7)


def test_padding_changes_nothing_with_real_token_means():
    q_s, k_s, q_t, k_t, mask = _inputs(0, b=1, t=6, pad=False)
    longer = [torch.cat([x, torch.randn(1, x.size(1), 4, x.size(-1)) * 50], dim=2) for x in (q_s, k_s, q_t, k_t)]
    padded_mask = torch.cat([mask, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    plain = attention_score_mse_from_qk(q_s, k_s, q_t, k_t, mask)
    assert attention_score_mse_from_qk(*longer, padded_mask).item() == pytest.approx(plain.item(), rel=1e-6)


def test_the_value_keeps_its_digits_when_student_and_teacher_nearly_agree():
    q_s, k_s, _, _, mask = _inputs(1, d_t=8)
    q_t = (q_s + 1e-3 * torch.randn_like(q_s)).detach()
    k_t = k_s.detach()
    ours = attention_score_mse_from_qk(q_s, k_s, q_t, k_t, mask)
    ref = _reference(q_s, k_s, q_t, k_t, mask, "real_tokens")
    assert ref.item() < 1e-4 and ours.item() == pytest.approx(ref.item(), rel=1e-3)


def test_head_counts_must_match():
    q_s, k_s, q_t, k_t, mask = _inputs(0)
    with pytest.raises(ValueError, match="equal head counts"):
        attention_score_mse_from_qk(q_s, k_s, q_t[:, :2], k_t[:, :2], mask)


def test_bf16_inputs_give_the_fp32_value_and_gradients_in_their_own_dtype():
    q_s, k_s, q_t, k_t, mask = _inputs(4)
    as_bf16 = [x.detach().bfloat16().requires_grad_(i < 2) for i, x in enumerate((q_s, k_s, q_t, k_t))]
    ours = attention_score_mse_from_qk(*as_bf16, mask)
    grads = torch.autograd.grad(ours, as_bf16[:2])
    ref = _reference(*(x.detach().double().requires_grad_(i < 2) for i, x in enumerate(as_bf16)), mask, "real_tokens")
    assert ours.dtype == torch.float32 and ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert all(g.dtype == torch.bfloat16 for g in grads)


def test_a_teacher_with_gradients_is_refused():
    q_s, k_s, q_t, k_t, mask = _inputs(0)
    with pytest.raises(ValueError, match="no gradient"):
        attention_score_mse_from_qk(q_s, k_s, q_t.requires_grad_(), k_t, mask)
