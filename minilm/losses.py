"""MiniLM (Wang et al., 2020) and MiniLMv2 (Wang et al., 2021) self-attention distillation losses, as pure functions.

Notation: B batch, T sequence length, m = attention_mask (B, T) with 1 for real tokens, N = sum(m) the number of
real tokens in the batch. Per-head tensors are (B, H, T, d) with H heads of size d (the layout that
`kdcore.attention_capture.SelfAttentionCapture` records); concatenated tensors are (B, T, H*d).

Every loss here is a KL divergence between row-wise softmax distributions over the *real keys* of a sequence:

    KL(P || S) = sum_j P_j (log P_j - log S_j),   P = teacher row, S = student row

Padded keys are removed before the softmax, padded query rows are dropped, and the sum is divided by
(number of heads x N), i.e. the loss is the mean over heads and over real query positions of the batch. Hence a
loss does not change with the amount or the content of padding. Rows with no real key at all (a fully padded
example) are masked with a large *finite* negative number, never -inf, so they stay finite and contribute 0: no
NaN in the value or the gradient.

Softmax and KL are computed in float32 with autocast disabled, so bf16/fp16 training does not degrade them.

Two implementations of the same formula: `scaled_dot_logits` + `masked_row_kl` spell it out with autograd and
materialise every (B, H, T, T) tensor (the reference, used by tests and `bench/bench_relation_loss.py`);
`pairwise_row_kl`, which every loss below uses, computes value and gradient together in chunks of heads (and of
examples), so its peak memory is bounded by `max_chunk_elements` instead of growing with B x H x T x T.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdcore.pairwise_maps import MAX_CHUNK_ELEMENTS, fp32_only, map_chunks

# What padded keys are filled with before the softmax: finite, so a row with no real key gives a uniform (finite)
# distribution instead of NaN; exp(MASK_VALUE - max) underflows to exactly 0 whenever a row has a real key.
MASK_VALUE = torch.finfo(torch.float32).min


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) -> (B, T, H*d): concatenate the heads of each token (the inverse of the heads split)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def split_relation_heads(x: torch.Tensor, num_relation_heads: int) -> torch.Tensor:
    """Re-split vectors into `num_relation_heads` relation heads, ignoring the model's own head boundaries.

    `x` is (B, T, D) or per-head (B, H, T, d) (merged first to (B, T, H*d)). Returns (B, R, T, D/R): relation
    head r holds dimensions [r*D/R, (r+1)*D/R) of the concatenated vector (MiniLMv2, Section 3.1).
    """
    if x.dim() == 4:
        x = merge_heads(x)
    b, t, dim = x.shape
    if num_relation_heads <= 0 or dim % num_relation_heads != 0:
        raise ValueError(f"number of relation heads {num_relation_heads} does not divide the hidden size {dim}")
    return x.view(b, t, num_relation_heads, dim // num_relation_heads).transpose(1, 2)


def scaled_dot_logits(a: torch.Tensor, b: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Scaled dot products between the tokens of one sequence, per head, in float32.

        Z[b, h, i, j] = <a[b, h, i], b[b, h, j]> / sqrt(d)      (d = a.size(-1))

    with Z[b, h, i, j] = MASK_VALUE (finite) where key j is padding (m[b, j] = 0). Shapes (B, H, T, d) -> (B, H, T, T).
    softmax(Z) over the last dim is an attention distribution (a = Q, b = K) or a self-attention relation (a = b).
    """
    with fp32_only(a.device):
        scale = 1.0 / math.sqrt(a.size(-1))
        z = torch.matmul(a.float(), b.float().transpose(-1, -2)) * scale
        key_is_pad = ~attention_mask.bool()[:, None, None, :]
        return z.masked_fill(key_is_pad, MASK_VALUE)


def masked_row_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher || student) between row softmaxes, over heads and real query positions.

        P = softmax(Z^T), S = softmax(Z^S) over the real keys j of each row (padded keys carry MASK_VALUE)
        L = 1 / (H * N) * sum_b sum_h sum_{i: m[b,i]=1} sum_{j: m[b,j]=1} P[b,h,i,j] * (log P[b,h,i,j] - log S[b,h,i,j])

    Shapes (B, H, T, T), H equal for both; N = number of real tokens in the batch. The teacher side should carry
    no gradient. float32, autocast off.
    """
    if teacher_logits.shape != student_logits.shape:
        raise ValueError(
            f"relation shapes differ: teacher {tuple(teacher_logits.shape)} vs student {tuple(student_logits.shape)}"
        )
    with fp32_only(student_logits.device):
        log_p = F.log_softmax(teacher_logits.float(), dim=-1)
        log_s = F.log_softmax(student_logits.float(), dim=-1)
        m = attention_mask.bool()
        pair = (m[:, :, None] & m[:, None, :])[:, None, :, :]  # (B, 1, T, T): real query and real key
        zero = torch.zeros((), device=log_s.device)
        # Select before multiplying, so nothing at a padded pair can turn into 0 * inf in the value or the gradient.
        log_p, log_s = torch.where(pair, log_p, zero), torch.where(pair, log_s, zero)
        p = torch.where(pair, log_p.exp(), zero)
        kl = p * (log_p - log_s)
        num_rows = m.sum() * teacher_logits.size(1)
        return kl.sum() / num_rows.clamp_min(1)


class _PairwiseRowKL(torch.autograd.Function):
    """sum over real (query, key) pairs of P (log P - log S) and its gradient w.r.t. the student's a and b, in one
    pass per chunk; backward only rescales the stored gradients (nothing of size T x T is kept)."""

    @staticmethod
    def forward(ctx, t_a, t_b, s_a, s_b, attention_mask, max_elements):
        B, H, T, _ = s_a.shape
        want_grad = ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        grad_a = torch.empty_like(s_a) if want_grad else None
        grad_b = torch.empty_like(s_b) if want_grad else None
        scale_t, scale_s = 1.0 / math.sqrt(t_a.size(-1)), 1.0 / math.sqrt(s_a.size(-1))
        m = attention_mask.bool()
        padded = not bool(m.all())  # packed corpora have no padding: then every masking pass is skipped
        total = torch.zeros((), dtype=torch.float64, device=s_a.device)
        with fp32_only(s_a.device):
            for bs, hs in map_chunks(B, H, T, max_elements):
                # The 1/sqrt(d) goes on one (B, h, T, d) operand: no extra pass over a T x T map.
                log_p = torch.matmul(t_a[bs, hs] * scale_t, t_b[bs, hs].transpose(-1, -2))
                log_s = torch.matmul(s_a[bs, hs] * scale_s, s_b[bs, hs].transpose(-1, -2))
                if padded:  # padded keys -> MASK_VALUE, so P = S = 0 there after the softmax
                    key_pad = ~m[bs, None, None, :]
                    not_pair = ~(m[bs, :, None] & m[bs, None, :])[:, None]
                    log_p.masked_fill_(key_pad, MASK_VALUE)
                    log_s.masked_fill_(key_pad, MASK_VALUE)
                log_p, log_s = log_p.log_softmax(-1), log_s.log_softmax(-1)
                p = log_p.exp()
                if padded:
                    # Padded query rows are not part of the loss; at padded keys P = 0 and log P, log S are finite
                    # (MASK_VALUE is finite), so the product below is 0 there: zeroing P on padded pairs is enough.
                    p.masked_fill_(not_pair, 0.0)
                # (log P - log S) in place, then one dot product. (Two dot products, P.log P - P.log S, would save
                # this pass but lose the small difference of two large fp32 sums.)
                total += torch.dot(p.view(-1), log_p.sub_(log_s).view(-1)).double()
                del log_p
                if want_grad:
                    # dL/dZ^S = S - P on real pairs (each real row of P sums to 1), 0 elsewhere; Z^S = a b^T * scale
                    g = log_s.exp_().sub_(p)
                    if padded:
                        g.masked_fill_(not_pair, 0.0)
                    grad_a[bs, hs] = torch.matmul(g, s_b[bs, hs]).mul_(scale_s)
                    grad_b[bs, hs] = torch.matmul(g.transpose(-1, -2), s_a[bs, hs]).mul_(scale_s)
                del log_s, p
        ctx.save_for_backward(grad_a, grad_b)
        return total.float()

    @staticmethod
    def backward(ctx, grad_out):
        grad_a, grad_b = ctx.saved_tensors
        return None, None, grad_a * grad_out, grad_b * grad_out, None, None


def pairwise_row_kl(
    teacher_a: torch.Tensor,
    teacher_b: torch.Tensor,
    student_a: torch.Tensor,
    student_b: torch.Tensor,
    attention_mask: torch.Tensor,
    max_chunk_elements: int = MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """masked_row_kl(scaled_dot_logits(t_a, t_b), scaled_dot_logits(s_a, s_b)) with bounded memory:

        P = softmax(t_a t_b^T / sqrt(d_T)),  S = softmax(s_a s_b^T / sqrt(d_S))      (rows over real keys)
        L = 1 / (H * N) * sum_{b, h, real i, real j} P (log P - log S)
        dL/dZ^S = (S - P) / (H * N) on real pairs  =>  dL/ds_a = (dL/dZ^S) s_b / sqrt(d_S),  dL/ds_b = (dL/dZ^S)^T s_a / sqrt(d_S)

    Per-head inputs (B, H, T, d_T) and (B, H, T, d_S), any float dtype (computed in float32, autocast off).
    Value and gradient are computed chunk by chunk (`max_chunk_elements` elements of T x T maps per chunk) in the
    forward pass, so no (B, H, T, T) tensor is ever whole. The teacher side must carry no gradient.
    """
    if teacher_a.shape[:3] != student_a.shape[:3]:
        raise ValueError(
            f"relation shapes differ: teacher {tuple(teacher_a.shape[:3])} vs student {tuple(student_a.shape[:3])} "
            "(batch, heads, tokens)"
        )
    if torch.is_grad_enabled() and (teacher_a.requires_grad or teacher_b.requires_grad):
        raise ValueError("the teacher's relations must carry no gradient (run the teacher under torch.no_grad())")
    kl_sum = _PairwiseRowKL.apply(teacher_a.float(), teacher_b.float(), student_a.float(), student_b.float(),
                                  attention_mask, int(max_chunk_elements))
    num_rows = attention_mask.bool().sum() * student_a.size(1)
    return kl_sum / num_rows.clamp_min(1)


# --------------------------------------------------------------------------------------------------------------
# MiniLM v1: last-layer attention distributions + value relations (same head count in teacher and student)
# --------------------------------------------------------------------------------------------------------------
def _per_head_kl(what, teacher_a, teacher_b, student_a, student_b, attention_mask) -> torch.Tensor:
    """masked_row_kl(softmax(a_T b_T^T / sqrt(d_T)), softmax(a_S b_S^T / sqrt(d_S))) over the models' own heads."""
    if teacher_a.dim() != 4 or student_a.dim() != 4:
        raise ValueError(f"{what}: expected per-head (B, H, T, d) tensors")
    if teacher_a.size(1) != student_a.size(1):
        raise ValueError(
            f"{what}: teacher has {teacher_a.size(1)} attention heads, student {student_a.size(1)}; MiniLM v1 needs "
            "equal head counts (MiniLMv2's relation heads do not)"
        )
    return pairwise_row_kl(teacher_a, teacher_b, student_a, student_b, attention_mask)


def attention_distribution_kl(
    teacher_query: torch.Tensor,
    teacher_key: torch.Tensor,
    student_query: torch.Tensor,
    student_key: torch.Tensor,
    attention_mask: torch.Tensor,
) -> torch.Tensor:
    """MiniLM attention-distribution transfer (L_AT).

        A_h = softmax(Q_h K_h^T / sqrt(d_k)),   d_k = each model's own head size
        L_AT = 1 / (H * N) * sum_b sum_h sum_{real i} KL(A^T_{b,h,i,:} || A^S_{b,h,i,:})

    Per-head inputs (B, H, T, d_T) and (B, H, T, d_S); H must be equal.
    """
    return _per_head_kl("attention-distribution loss", teacher_query, teacher_key, student_query, student_key, attention_mask)


def value_relation_kl(teacher_value: torch.Tensor, student_value: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """MiniLM value-relation transfer (L_VR).

        VR_h = softmax(V_h V_h^T / sqrt(d_k)),   d_k = each model's own head size
        L_VR = 1 / (H * N) * sum_b sum_h sum_{real i} KL(VR^T_{b,h,i,:} || VR^S_{b,h,i,:})

    Per-head inputs (B, H, T, d_T) and (B, H, T, d_S); H must be equal.
    """
    return _per_head_kl("value-relation loss", teacher_value, teacher_value, student_value, student_value, attention_mask)


# --------------------------------------------------------------------------------------------------------------
# MiniLMv2: multi-head self-attention relations (Q-Q, K-K, V-V) over re-split relation heads
# --------------------------------------------------------------------------------------------------------------
def self_attention_relation_kl(
    teacher_states: torch.Tensor,
    student_states: torch.Tensor,
    attention_mask: torch.Tensor,
    num_relation_heads: int,
    max_chunk_elements: int = MAX_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """MiniLMv2 self-attention relation transfer for one of Q, K or V.

        A = concat of all heads' vectors (B, T, D), split into R relation heads A_r of size d_r = D / R
        R_r = softmax(A_r A_r^T / sqrt(d_r))                       (d_r computed per model)
        L = 1 / (R * N) * sum_b sum_r sum_{real i} KL(R^T_{b,r,i,:} || R^S_{b,r,i,:})

    Inputs (B, T, D) or per-head (B, H, T, d); teacher and student may differ in D and in H, but R must divide
    both D_T and D_S.
    """
    t = split_relation_heads(teacher_states, num_relation_heads)
    s = split_relation_heads(student_states, num_relation_heads)
    return pairwise_row_kl(t, t, s, s, attention_mask, max_chunk_elements)


def common_relation_head_counts(*hidden_sizes: int, limit: int = 6) -> list[int]:
    """The largest relation-head counts that divide every hidden size (for error messages)."""
    g = math.gcd(*hidden_sizes)
    return sorted((r for r in range(1, g + 1) if g % r == 0), reverse=True)[:limit]
