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
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# What padded keys are filled with before the softmax: finite, so a row with no real key gives a uniform (finite)
# distribution instead of NaN; exp(MASK_VALUE - max) underflows to exactly 0 whenever a row has a real key.
MASK_VALUE = torch.finfo(torch.float32).min


def _fp32(device: torch.device):
    """Context manager that turns autocast off on `device`, so matmul/softmax below really run in float32."""
    return torch.autocast(device_type=device.type, enabled=False)


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
    with _fp32(a.device):
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
    with _fp32(student_logits.device):
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
    return masked_row_kl(
        scaled_dot_logits(teacher_a, teacher_b, attention_mask),
        scaled_dot_logits(student_a, student_b, attention_mask),
        attention_mask,
    )


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
    return masked_row_kl(
        scaled_dot_logits(t, t, attention_mask),
        scaled_dot_logits(s, s, attention_mask),
        attention_mask,
    )


def common_relation_head_counts(*hidden_sizes: int, limit: int = 6) -> list[int]:
    """The largest relation-head counts that divide every hidden size (for error messages)."""
    g = math.gcd(*hidden_sizes)
    return sorted((r for r in range(1, g + 1) if g % r == 0), reverse=True)[:limit]
