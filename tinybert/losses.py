"""TinyBERT's distillation losses (Jiao et al., 2020), as pure functions.

Notation: B batch, T sequence length, H heads, D hidden size, C classes, m = attention_mask (B, T) with 1 for
real tokens.

The toolkit's default: padded positions never contribute, every mean is over real tokens (and real query/key
pairs) only, so a loss does not change with the amount or the content of padding. The `*_original` functions
reduce as TinyBERT's code did (`--loss_reduction original`): plain means over every position of the padded batch,
so a loss shrinks as padding grows, and the soft cross-entropy is averaged over classes too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kdcore.pairwise_maps import MAX_CHUNK_ELEMENTS, fp32_only, map_chunks
from kdcore.student_init import uniform_layer_map


def layer_mapping(num_student_layers: int, num_teacher_layers: int) -> list[int]:
    """Uniform layer map, 0-based: student layer i learns from teacher layer g(i) - 1, g = `uniform_layer_map`.

    When the depths divide (k = N_t / N_s) this is TinyBERT's (i+1)*k - 1; otherwise the nearest uniform map with the
    top layer kept (6 -> 4: teacher layers 2, 3, 5, 6). For hidden states (index 0 = embedding output) the map
    reads: student state j <- teacher state g(j).
    """
    return [layer - 1 for layer in uniform_layer_map(num_student_layers, num_teacher_layers)]


def _token_weights(attention_mask: torch.Tensor) -> torch.Tensor:
    return attention_mask.to(torch.float32)


def hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden-state (or embedding-output) loss.

        L = (1 / (N_real * D)) * sum_{b,t: m[b,t]=1} || W h^S_{b,t} - h^T_{b,t} ||^2

    `student_hidden` must already be projected to the teacher's width (TinyBERT's trainable `fit_dense` W).
    Shapes (B, T, D). Computed in fp32.
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"student {tuple(student_hidden.shape)} vs teacher {tuple(teacher_hidden.shape)}")
    w = _token_weights(attention_mask)
    sq = (student_hidden.float() - teacher_hidden.float()).pow(2).mean(dim=-1)  # (B, T)
    return (sq * w).sum() / w.sum().clamp_min(1.0)


def attention_score_mse(student_scores: torch.Tensor, teacher_scores: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Attention-matrix loss on raw (pre-softmax) scores A = QK^T / sqrt(d_k).

        L = (1 / (H * P)) * sum_h sum_{(i,j) real} (A^S_{h,i,j} - A^T_{h,i,j})^2,   P = number of real (query, key) pairs

    Shapes (B, H, T, T); teacher and student need the same number of heads (TinyBERT keeps 12).
    Scores may contain -inf at padded keys: those pairs are excluded before any arithmetic.
    """
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f"attention shapes differ: student {tuple(student_scores.shape)} vs teacher {tuple(teacher_scores.shape)}"
            " (TinyBERT's attention loss needs equal head counts)"
        )
    m = attention_mask.bool()
    pair = (m[:, :, None] & m[:, None, :])[:, None, :, :]  # (B, 1, T, T)
    diff = torch.where(pair, student_scores.float() - teacher_scores.float(), torch.zeros((), device=m.device))
    num_pairs = pair.sum() * student_scores.size(1)
    return diff.pow(2).sum() / num_pairs.clamp_min(1)


class _ScoreMapSquaredError(torch.autograd.Function):
    """sum_{b,h,i,j} (c_s Q_s K_s^T - c_t Q_t K_t^T)^2 and its gradient w.r.t. the student's Q_s and K_s, computed
    chunk by chunk in the forward pass; backward only rescales the stored gradients (nothing T x T is kept)."""

    @staticmethod
    def forward(ctx, q_s, k_s, q_t, k_t, max_elements):
        B, H, T, _ = q_s.shape
        want_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_q = torch.empty_like(q_s) if want_grad else None
        grad_k = torch.empty_like(k_s) if want_grad else None
        c_s, c_t = q_s.size(-1) ** -0.5, q_t.size(-1) ** -0.5
        total = torch.zeros((), dtype=torch.float64, device=q_s.device)
        with fp32_only(q_s.device):
            for bs, hs in map_chunks(B, H, T, max_elements):
                # E = A_s - A_t for this chunk; the scales go on one (B, h, T, d) operand each
                diff = torch.matmul(q_s[bs, hs] * c_s, k_s[bs, hs].transpose(-1, -2))
                diff.sub_(torch.matmul(q_t[bs, hs] * c_t, k_t[bs, hs].transpose(-1, -2)))
                total += torch.dot(diff.view(-1), diff.view(-1)).double()
                if want_grad:  # dL/dQ_s = 2 c_s E K_s,  dL/dK_s = 2 c_s E^T Q_s
                    grad_q[bs, hs] = torch.matmul(diff, k_s[bs, hs]).mul_(2 * c_s)
                    grad_k[bs, hs] = torch.matmul(diff.transpose(-1, -2), q_s[bs, hs]).mul_(2 * c_s)
                del diff
        ctx.save_for_backward(grad_q, grad_k)
        return total.float()

    @staticmethod
    def backward(ctx, grad_out):
        grad_q, grad_k = ctx.saved_tensors
        return grad_q * grad_out, grad_k * grad_out, None, None, None


def attention_score_mse_from_qk(student_query: torch.Tensor, student_key: torch.Tensor, teacher_query: torch.Tensor,
                                teacher_key: torch.Tensor, attention_mask: torch.Tensor,
                                reduction: str = "real_tokens",
                                max_chunk_elements: int = MAX_CHUNK_ELEMENTS) -> torch.Tensor:
    """`attention_score_mse` ("real_tokens") or `attention_score_mse_original` ("original") of the raw scores
    A = c Q K^T (c = 1/sqrt(d), each model's own head size), from the (B, H, T, d) queries and keys, with memory
    bounded by `max_chunk_elements` elements of T x T maps instead of B x H x T x T per tensor kept for backward.

    The pair mask of real (query, key) pairs is the outer product m_i m_j, so it folds into the operands:
    Q~ = m * Q, K~ = m * K ("original" masks the keys only: padded queries count there). Then

        L = sum_{b,h,i,j} E_{bhij}^2 / count,   E = c_s Q~_s K~_s^T - c_t Q~_t K~_t^T,
        dL/dQ~_s = 2 c_s E K~_s / count,         dL/dK~_s = 2 c_s E^T Q~_s / count,

    count = H * sum_b n_b^2 (real pairs) or B * H * T * T ("original"). E, the value and both gradients are formed
    chunk by chunk in float32 (autocast off), the chunks' sums added in float64; E itself is computed as one
    difference, so the value keeps its digits when student and teacher nearly agree. Equal to the map-based losses
    up to rounding (tests/test_tinybert_losses.py); "original" differs only where a real score is at or below -100,
    which TinyBERT's code would also have zeroed. The teacher side must carry no gradient.
    """
    if student_query.shape[:3] != teacher_query.shape[:3]:
        raise ValueError(f"attention shapes differ: student {tuple(student_query.shape)} vs teacher "
                         f"{tuple(teacher_query.shape)} (TinyBERT's attention loss needs equal head counts)")
    if torch.is_grad_enabled() and (teacher_query.requires_grad or teacher_key.requires_grad):
        raise ValueError("the teacher's queries and keys must carry no gradient (run the teacher under torch.no_grad())")
    b, h, t = student_query.shape[:3]
    qs, ks, qt, kt = (x.float() for x in (student_query, student_key, teacher_query, teacher_key))
    if not bool(attention_mask.bool().all()):  # packed corpora have no padding: no masking pass then
        m = attention_mask.to(torch.float32)[:, None, :, None]  # (B, 1, T, 1)
        ks, kt = ks * m, kt * m
        if reduction != "original":
            qs, qt = qs * m, qt * m
    if reduction == "original":
        count = b * h * t * t
    else:
        count = (h * attention_mask.double().sum(-1).pow(2).sum()).clamp_min(1)
    total = _ScoreMapSquaredError.apply(qs, ks, qt, kt, int(max_chunk_elements))
    return (total.double() / count).float()


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Prediction-layer loss: cross-entropy against the teacher's softened distribution.

        L = -(1/B) * sum_b sum_c softmax(z^T_b / T)_c * log softmax(z^S_b / T)_c

    (No T^2 factor, as in TinyBERT.) Shapes (B, C).
    """
    t = temperature
    target = torch.softmax(teacher_logits.float() / t, dim=-1)
    return -(target * F.log_softmax(student_logits.float() / t, dim=-1)).sum(dim=-1).mean()


def hidden_mse_original(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    """TinyBERT's hidden-state loss: MSE over every position, padding included.

        L = (1 / (B * T * D)) * sum_{b,t,d} (W h^S_{b,t,d} - h^T_{b,t,d})^2
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(f"student {tuple(student_hidden.shape)} vs teacher {tuple(teacher_hidden.shape)}")
    return F.mse_loss(student_hidden.float(), teacher_hidden.float())


def attention_score_mse_original(student_scores: torch.Tensor, teacher_scores: torch.Tensor) -> torch.Tensor:
    """TinyBERT's attention loss: scores at or below -100 (the additive mask of padded keys) become 0 in each
    model, then MSE over every (batch, head, query, key) entry, padded queries and keys included.

        A' = A where A > -100, else 0;    L = (1 / (B * H * T * T)) * sum (A'^S - A'^T)^2
    """
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(f"attention shapes differ: student {tuple(student_scores.shape)} vs teacher "
                         f"{tuple(teacher_scores.shape)}")
    zero = torch.zeros((), device=student_scores.device)
    s = student_scores.float()
    t = teacher_scores.float()
    return F.mse_loss(torch.where(s <= -1e2, zero, s), torch.where(t <= -1e2, zero, t))


def soft_cross_entropy_original(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                                temperature: float = 1.0) -> torch.Tensor:
    """TinyBERT's prediction-layer loss, averaged over classes as well as examples (= the default / C):

        L = -(1 / (B * C)) * sum_b sum_c softmax(z^T_b / T)_c * log softmax(z^S_b / T)_c
    """
    t = temperature
    target = torch.softmax(teacher_logits.float() / t, dim=-1)
    return -(target * F.log_softmax(student_logits.float() / t, dim=-1)).mean()


def regression_mse(student_predictions: torch.Tensor, target_predictions: torch.Tensor) -> torch.Tensor:
    """Prediction-layer loss for regression tasks (STS-B): L = mean_b (y^S_b - y_b)^2, where y is the teacher's
    score (the toolkit's default) or the gold score (TinyBERT's code, `--stsb_target gold`)."""
    return F.mse_loss(student_predictions.float().view(-1), target_predictions.float().view(-1))


def hinton_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   temperature: float, alpha: float) -> torch.Tensor:
    """Soft labels mixed with the gold labels (Hinton et al., 2015):

        L = alpha * CE(z^S, y) + (1 - alpha) * T^2 * (1/B) * sum_b KL( softmax(z^T_b / T) || softmax(z^S_b / T) )

    The T^2 keeps the soft term's gradient on the scale of the gold term's as T grows. With alpha = 0 the gradient
    equals `soft_cross_entropy`'s times T^2 (KL and soft cross-entropy differ by the teacher's entropy, a constant).
    Shapes (B, C) and (B,).
    """
    t = temperature
    log_target = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = F.kl_div(F.log_softmax(student_logits.float() / t, dim=-1), log_target, reduction="batchmean",
                  log_target=True)
    gold = F.cross_entropy(student_logits.float(), labels)
    return alpha * gold + (1.0 - alpha) * t * t * kl
