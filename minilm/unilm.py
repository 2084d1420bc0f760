"""UniLM sequence-to-sequence fine-tuning of a BERT / RoBERTa / XLM-R encoder (s2s-ft's pseudo-mask objective).

One encoder reads `[CLS] source [SEP] target [SEP]` under a self-attention mask that is bidirectional over the
source and left-to-right over the target. With the pseudo-mask objective (s2s-ft's `mask_way v2`) the input is

    source tokens  |  real target tokens y_1..y_T  |  pseudo twins m_1..m_T

where twin m_i sits at the same position as y_i (same position id), usually holds [MASK], sees the source, the
real target tokens *before* it and itself, and is trained to predict y_i. Real target tokens see the source and
the real target tokens up to and including themselves, so at decoding time a real token's keys/values never
change once computed (this is what makes the key/value cache in `beam_search` exact).

The model is a plain Hugging Face `*ForMaskedLM`; training calls its encoder with a ready-made 4-D additive
attention mask (transformers 5 passes a 4-D mask through unchanged to SDPA/eager attention), and what is saved
is an ordinary `save_pretrained` folder.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from kdcore.families import max_input_positions

# Model types whose position ids start after the padding index (fairseq convention).


# --------------------------------------------------------------------------------------------------------------
# Masks and ids
# --------------------------------------------------------------------------------------------------------------
def pseudo_mask_attention(num_source_tokens: torch.Tensor, num_target_tokens: torch.Tensor,
                          source_len: int, target_len: int) -> torch.Tensor:
    """Boolean self-attention mask (B, L, L), L = source_len + 2 * target_len; True = query may attend key.

    Layout of a row: source (padded to `source_len`), real target (padded to `target_len`), pseudo twins (padded
    to `target_len`). With s = num_source_tokens, t = num_target_tokens of the example:

    * real source token (i < s):               attends real source tokens.
    * real target token y_p (p < t):           attends real source tokens and y_0..y_p.
    * pseudo twin m_p (p < t):                 attends real source tokens, y_0..y_{p-1}, and m_p itself.
    * padding (any block):                     attends only itself (keeps every softmax row well defined);
                                               nothing real attends a padding position.
    """
    device = num_source_tokens.device
    B, S, T = num_source_tokens.size(0), source_len, target_len
    src_pos = torch.arange(S, device=device)
    tgt_pos = torch.arange(T, device=device)
    src_real = src_pos[None, :] < num_source_tokens[:, None]  # (B, S)
    tgt_real = tgt_pos[None, :] < num_target_tokens[:, None]  # (B, T)

    L = S + 2 * T
    mask = torch.zeros(B, L, L, dtype=torch.bool, device=device)
    src_rows = slice(0, S)
    tgt_rows = slice(S, S + T)
    ps_rows = slice(S + T, L)
    # Everything real sees the real source.
    real_rows = torch.cat([src_real, tgt_real, tgt_real], dim=1)  # (B, L)
    mask[:, :, src_rows] = real_rows[:, :, None] & src_real[:, None, :]
    # Real target rows: causal (inclusive) over real target tokens.
    causal_incl = tgt_pos[:, None] >= tgt_pos[None, :]  # (T, T)
    mask[:, tgt_rows, tgt_rows] = causal_incl[None] & tgt_real[:, :, None] & tgt_real[:, None, :]
    # Pseudo rows: strictly earlier real target tokens, then itself.
    causal_excl = tgt_pos[:, None] > tgt_pos[None, :]
    mask[:, ps_rows, tgt_rows] = causal_excl[None] & tgt_real[:, :, None] & tgt_real[:, None, :]
    eye = torch.eye(T, dtype=torch.bool, device=device)
    mask[:, ps_rows, ps_rows] = eye[None] & tgt_real[:, :, None]
    # Padding rows attend themselves only.
    pad_rows = ~real_rows
    diag = torch.arange(L, device=device)
    mask[:, diag, diag] |= pad_rows
    return mask


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean (B, Q, K) -> additive (B, 1, Q, K): 0 where allowed, the dtype's minimum where not.

    A 4-D float mask is what transformers 5 hands unchanged to every attention implementation (SDPA adds it,
    eager adds it); the finite minimum (not -inf) keeps fully masked rows free of NaN in any backend.
    """
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[:, None]


def hf_attention_mask(mask: torch.Tensor, config) -> torch.Tensor:
    """The boolean (B, Q, K) mask in the 4-D form transformers 5 passes through unchanged to attention.

    SDPA (the default) takes a boolean (B, 1, Q, K) mask as is, also under fp16/bf16 autocast; the eager
    implementation adds the mask to the scores, so it gets the additive float form.
    """
    if getattr(config, "_attn_implementation", "sdpa") == "eager":
        return additive_mask(mask, torch.float32)
    return mask[:, None]


# --------------------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------------------
def label_smoothed_kl(log_probs: torch.Tensor, labels: torch.Tensor, smoothing: float, pad_id: int) -> torch.Tensor:
    """Per-token label-smoothing loss KL(q || p), shape = labels.shape.

    With V the vocabulary size, eps = `smoothing`, y the label and p = exp(log_probs):

        q(w) = 1 - eps            for w = y
        q(w) = eps / (V - 2)      for w not in {y, pad}
        q(w) = 0                  for w = pad        (the tokenizer's real pad id, not a hard-coded 0)

        loss = sum_w q(w) * (log q(w) - log p(w));   loss = 0 where y = pad.

    This is s2s-ft's `LabelSmoothingLoss` (which hard-coded pad = 0, i.e. RoBERTa/XLM-R's <s>). With eps = 0 it is
    the cross entropy -log p(y).
    """
    if log_probs.dtype != torch.float64:
        log_probs = log_probs.float()
    V = log_probs.size(-1)
    log_p_y = log_probs.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    if smoothing <= 0:
        loss = -log_p_y
    else:
        eps = float(smoothing)
        other = eps / (V - 2)
        entropy_term = (1 - eps) * math.log(1 - eps) if eps < 1 else 0.0
        entropy_term += eps * math.log(other)  # sum_w q log q  (V - 2 entries equal to `other`)
        log_p_pad = log_probs[..., pad_id]
        cross = (1 - eps) * log_p_y + other * (log_probs.sum(-1) - log_p_y - log_p_pad)
        loss = entropy_term - cross
    return loss.masked_fill(labels == pad_id, 0.0)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(values * mask) / max(1, sum(mask)) -- the mean over the real target tokens of the whole batch."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# --------------------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------------------
class UniLMSeq2Seq(nn.Module):
    """A `*ForMaskedLM` model trained with the pseudo-mask seq2seq objective.

    forward(**batch) -> {"loss": label-smoothed loss, "nll": plain cross entropy (logged)}; batch from
    `minilm.seq2seq_data.collate_train`.
    """

    def __init__(self, mlm: nn.Module, pad_token_id: int, mask_token_id: int, label_smoothing: float = 0.0):
        super().__init__()
        self.mlm = mlm
        config = mlm.config
        self.pad_token_id = int(pad_token_id)
        self.mask_token_id = int(mask_token_id)
        self.label_smoothing = float(label_smoothing)
        self.position_offset = config.max_position_embeddings - max_input_positions(config)
        self.source_type_id = 0
        self.target_type_id = 1 if getattr(config, "type_vocab_size", 1) > 1 else 0

    # -- pieces of the HF model ------------------------------------------------------------------------------
    @property
    def config(self):
        return self.mlm.config

    @property
    def encoder_model(self) -> nn.Module:
        return self.mlm.base_model

    @property
    def lm_head(self) -> nn.Module:
        head = getattr(self.mlm, "cls", None)
        if head is None:
            head = getattr(self.mlm, "lm_head", None)
        if head is None:
            raise TypeError(f"{type(self.mlm).__name__} has no masked-LM head (cls / lm_head)")
        return head

    def max_positions(self) -> int:
        """How many positions (source + target tokens) the position embeddings can hold."""
        return max_input_positions(self.config)

    # -- training --------------------------------------------------------------------------------------------
    def build_inputs(self, source_ids, target_ids, pseudo_ids, num_source_tokens, num_target_tokens):
        """input_ids, token_type_ids, position_ids and the boolean UniLM mask for the concatenated sequence."""
        S, T = source_ids.size(1), target_ids.size(1)
        input_ids = torch.cat([source_ids, target_ids, pseudo_ids], dim=1)
        token_type_ids = torch.cat([
            torch.full_like(source_ids, self.source_type_id),
            torch.full_like(target_ids, self.target_type_id),
            torch.full_like(pseudo_ids, self.target_type_id),
        ], dim=1)
        src_pos = torch.arange(S, device=source_ids.device)[None].expand(source_ids.size(0), -1)
        tgt_pos = torch.arange(T, device=source_ids.device)[None] + num_source_tokens[:, None]
        src_pos = src_pos * (src_pos < num_source_tokens[:, None])
        tgt_pos = tgt_pos * (torch.arange(T, device=source_ids.device)[None] < num_target_tokens[:, None])
        position_ids = torch.cat([src_pos, tgt_pos, tgt_pos], dim=1) + self.position_offset
        mask = pseudo_mask_attention(num_source_tokens, num_target_tokens, S, T)
        return input_ids, token_type_ids, position_ids, mask

    def pseudo_hidden_states(self, source_ids, target_ids, pseudo_ids, num_source_tokens, num_target_tokens):
        """Last-layer hidden states of the pseudo twins, (B, T, hidden)."""
        input_ids, token_type_ids, position_ids, mask = self.build_inputs(
            source_ids, target_ids, pseudo_ids, num_source_tokens, num_target_tokens)
        out = self.encoder_model(
            input_ids=input_ids,
            attention_mask=hf_attention_mask(mask, self.config),
            token_type_ids=token_type_ids,
            position_ids=position_ids,
        )
        T = target_ids.size(1)
        return out.last_hidden_state[:, source_ids.size(1) + T:]

    def forward(self, source_ids, target_ids, pseudo_ids, label_ids, num_source_tokens, num_target_tokens):
        hidden = self.pseudo_hidden_states(source_ids, target_ids, pseudo_ids, num_source_tokens, num_target_tokens)
        logits = self.lm_head(hidden)
        log_probs = F.log_softmax(logits.float(), dim=-1)
        real = torch.arange(label_ids.size(1), device=label_ids.device)[None] < num_target_tokens[:, None]
        loss = masked_mean(label_smoothed_kl(log_probs, label_ids, self.label_smoothing, self.pad_token_id), real)
        with torch.no_grad():
            nll = masked_mean(label_smoothed_kl(log_probs, label_ids, 0.0, self.pad_token_id), real)
        return {"loss": loss, "nll": nll.detach()}
