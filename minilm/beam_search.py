"""Batched beam search for UniLM seq2seq models, with a key/value cache over the source and the decoded prefix.

Two interchangeable "steppers" produce the next-token log-probabilities:

* `CachedStepper`  - encodes the source once and keeps every layer's source keys/values (one copy per example,
  shared by its beams); each step feeds only the previous token and the new [MASK] twin, appends the previous
  token's keys/values to the per-beam target cache and drops the twin's. Exact, because in the UniLM mask a real
  target token never sees anything after itself.
* `RecomputeStepper` - rebuilds the whole training-style input (source, decoded prefix, pseudo twins) and runs
  the full model at every step (what s2s-ft's decoder amounted to). Used as the reference in tests and benches.

`beam_search` drives either one. Beams that emit [SEP]/eos leave the beam as finished hypotheses; an example
stops as soon as no live beam can beat its K best finished hypotheses, and finished examples leave the batch
(their cache rows are dropped). Greedy decoding is beam size 1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kdcore.attention_capture import SelfAttentionCapture
from kdcore.modeling import encoder_layers

from .unilm import UniLMSeq2Seq

NEG_INF = float("-inf")


# --------------------------------------------------------------------------------------------------------------
# n-gram blocking
# --------------------------------------------------------------------------------------------------------------
def repeated_ngram_mask(prefixes: torch.Tensor, n: int, vocab_size: int,
                        ignore_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens that would repeat an n-gram already in each prefix, as a boolean (N, vocab_size) mask.

    For a prefix y_1..y_t the last n-1 tokens are the "tail"; every earlier window y_i..y_{i+n-2} equal to the
    tail bans y_{i+n-1}. As in s2s-ft's `--forbid_ignore_word`: no token is banned when the tail contains an
    ignored token, and ignored tokens are never banned. Pure tensor ops: runs on CPU and GPU alike.
    """
    N, t = prefixes.shape
    banned = torch.zeros(N, vocab_size + 1, dtype=torch.bool, device=prefixes.device)
    if n < 1 or t < n:
        return banned[:, :vocab_size]
    windows = prefixes.unfold(1, n, 1)  # (N, t - n + 1, n): every complete n-gram of the prefix
    tail = prefixes[:, t - (n - 1):] if n > 1 else prefixes[:, :0]
    match = (windows[:, :, : n - 1] == tail[:, None, :]).all(-1)  # (N, W)
    if ignore_ids is not None and ignore_ids.numel():
        match &= ~torch.isin(tail, ignore_ids).any(-1, keepdim=True)
    # Non-matching windows write into the spare last column, so duplicates never race with real hits.
    target = torch.where(match, windows[:, :, n - 1], torch.full_like(windows[:, :, n - 1], vocab_size))
    banned.scatter_(1, target, True)
    banned = banned[:, :vocab_size]
    if ignore_ids is not None and ignore_ids.numel():
        banned[:, ignore_ids] = False
    return banned


# --------------------------------------------------------------------------------------------------------------
# Steppers
# --------------------------------------------------------------------------------------------------------------
class RecomputeStepper:
    """Reference stepper: the full training-style forward over source + prefix + twins at every step."""

    def __init__(self, model: UniLMSeq2Seq):
        self.model = model

    def start(self, source_ids: torch.Tensor, num_source_tokens: torch.Tensor) -> None:
        self.source_ids = source_ids
        self.num_source_tokens = num_source_tokens
        self.group = 1
        self.prefixes = source_ids.new_zeros(source_ids.size(0), 0)

    def step(self, prev_tokens: torch.Tensor | None) -> torch.Tensor:
        m = self.model
        if prev_tokens is not None:
            self.prefixes = torch.cat([self.prefixes, prev_tokens[:, None]], dim=1)
        N, t = self.prefixes.shape
        src = self.source_ids.repeat_interleave(self.group, 0)
        n_src = self.num_source_tokens.repeat_interleave(self.group, 0)
        target = torch.cat([self.prefixes, self.prefixes.new_full((N, 1), m.pad_token_id)], dim=1)
        pseudo = torch.full_like(target, m.mask_token_id)
        n_tgt = torch.full_like(n_src, t + 1)
        hidden = m.pseudo_hidden_states(src, target, pseudo, n_src, n_tgt)[:, -1]
        return F.log_softmax(m.lm_head(hidden).float(), dim=-1)

    def select(self, example_index: torch.Tensor, row_index: torch.Tensor, group: int) -> None:
        self.source_ids = self.source_ids.index_select(0, example_index)
        self.num_source_tokens = self.num_source_tokens.index_select(0, example_index)
        self.prefixes = self.prefixes.index_select(0, row_index)
        self.group = group


class CachedStepper:
    """Incremental decoding over the HF model's own modules with a per-layer key/value cache.

    Source keys/values: (B, H, S, d) per layer, one copy per example; the beams of an example read it through a
    grouped matmul, so reordering beams never copies the (long) source cache. Target keys/values: (B*G, H, t, d)
    per layer, reordered with the beams.
    """

    def __init__(self, model: UniLMSeq2Seq):
        self.model = model
        self.layers = encoder_layers(model.encoder_model)
        pos_type = getattr(model.config, "position_embedding_type", "absolute")
        if pos_type not in (None, "absolute"):
            raise ValueError(f"cached decoding supports absolute position embeddings only, not {pos_type!r}")

    def start(self, source_ids: torch.Tensor, num_source_tokens: torch.Tensor) -> None:
        m = self.model
        B, S = source_ids.shape
        real = torch.arange(S, device=source_ids.device)[None] < num_source_tokens[:, None]
        positions = torch.arange(S, device=source_ids.device)[None].expand(B, -1) * real + m.position_offset
        with SelfAttentionCapture(m.encoder_model, list(range(len(self.layers))), parts=("key", "value")) as cap:
            m.encoder_model(
                input_ids=source_ids,
                attention_mask=real.long(),
                token_type_ids=torch.full_like(source_ids, m.source_type_id),
                position_ids=positions,
            )
        self.src_k = [cap[i].key for i in range(len(self.layers))]
        self.src_v = [cap[i].value for i in range(len(self.layers))]
        self.src_bias = torch.zeros(B, 1, 1, S, dtype=torch.float32, device=source_ids.device)
        self.src_bias.masked_fill_(~real[:, None, None, :], torch.finfo(torch.float32).min)
        self.num_source_tokens = num_source_tokens
        self.group = 1
        self.tgt_k = [None] * len(self.layers)
        self.tgt_v = [None] * len(self.layers)
        self.num_cached = 0

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        """(B*G, H, q, X) -> (B, H, G*q, X): the rows of one example side by side, to meet its source cache."""
        N, H, q, X = x.shape
        B, G = N // self.group, self.group
        return x.view(B, G, H, q, X).permute(0, 2, 1, 3, 4).reshape(B, H, G * q, X)

    def _ungrouped(self, x: torch.Tensor, q: int) -> torch.Tensor:
        B, H, Gq, X = x.shape
        G = Gq // q
        return x.view(B, H, G, q, X).permute(0, 2, 1, 3, 4).reshape(B * G, H, q, X)

    def _layer(self, i: int, layer, hidden: torch.Tensor, keep_first: bool) -> torch.Tensor:
        sa = layer.attention.self
        N, q, _ = hidden.shape
        H = sa.num_attention_heads
        d = sa.attention_head_size

        def heads(x):
            return x.view(N, q, H, d).transpose(1, 2)

        query, key, value = heads(sa.query(hidden)), heads(sa.key(hidden)), heads(sa.value(hidden))
        scale = 1.0 / math.sqrt(d)
        # Scores against the source (shared by the beams of an example), the cached target, the new tokens.
        s_src = torch.matmul(self._grouped(query), self.src_k[i].transpose(-1, -2)).float() * scale
        s_src = self._ungrouped(s_src + self.src_bias, q)
        keys_t = key if self.tgt_k[i] is None else torch.cat([self.tgt_k[i], key], dim=2)
        vals_t = value if self.tgt_v[i] is None else torch.cat([self.tgt_v[i], value], dim=2)
        s_tgt = torch.matmul(query, keys_t.transpose(-1, -2)).float() * scale
        if q == 2:  # the previous token must not see the [MASK] twin after it
            s_tgt[:, :, 0, -1] = torch.finfo(torch.float32).min
        probs = torch.softmax(torch.cat([s_src, s_tgt], dim=-1), dim=-1).to(query.dtype)
        S = s_src.size(-1)
        ctx = self._ungrouped(torch.matmul(self._grouped(probs[..., :S].contiguous()), self.src_v[i]), q)
        ctx = ctx + torch.matmul(probs[..., S:], vals_t)
        ctx = ctx.transpose(1, 2).reshape(N, q, H * d)
        attn_out = layer.attention.output(ctx, hidden)
        out = layer.output(layer.intermediate(attn_out), attn_out)
        if keep_first:  # cache the real token's keys/values; the twin's are dropped
            self.tgt_k[i] = keys_t[:, :, : keys_t.size(2) - q + 1]
            self.tgt_v[i] = vals_t[:, :, : vals_t.size(2) - q + 1]
        return out

    def step(self, prev_tokens: torch.Tensor | None) -> torch.Tensor:
        m = self.model
        n_src = self.num_source_tokens.repeat_interleave(self.group, 0)
        N = n_src.size(0)
        mask_col = n_src.new_full((N, 1), m.mask_token_id)
        if prev_tokens is None:
            ids = mask_col
            positions = n_src[:, None] + self.num_cached
        else:
            ids = torch.cat([prev_tokens[:, None], mask_col], dim=1)
            positions = n_src[:, None] + self.num_cached + torch.arange(2, device=n_src.device)[None]
        hidden = m.encoder_model.embeddings(
            input_ids=ids,
            token_type_ids=torch.full_like(ids, m.target_type_id),
            position_ids=positions + m.position_offset,
        )
        for i, layer in enumerate(self.layers):
            hidden = self._layer(i, layer, hidden, keep_first=prev_tokens is not None)
        if prev_tokens is not None:
            self.num_cached += 1
        return F.log_softmax(m.lm_head(hidden[:, -1]).float(), dim=-1)

    def select(self, example_index: torch.Tensor, row_index: torch.Tensor, group: int) -> None:
        if example_index.numel() != self.num_source_tokens.numel():
            self.src_k = [k.index_select(0, example_index) for k in self.src_k]
            self.src_v = [v.index_select(0, example_index) for v in self.src_v]
            self.src_bias = self.src_bias.index_select(0, example_index)
            self.num_source_tokens = self.num_source_tokens.index_select(0, example_index)
        if self.tgt_k[0] is not None:
            self.tgt_k = [k.index_select(0, row_index) for k in self.tgt_k]
            self.tgt_v = [v.index_select(0, row_index) for v in self.tgt_v]
        self.group = group


# --------------------------------------------------------------------------------------------------------------
# Beam search
# --------------------------------------------------------------------------------------------------------------
@dataclass
class SearchConfig:
    eos_id: int
    beam_size: int = 1
    max_len: int = 48  # target tokens, the final eos included
    min_len: int = 1  # eos is forbidden until this many tokens were generated
    length_penalty: float = 0.0  # GNMT ((5 + len) / 6) ** lp; <= 0: raw log-probability sums
    forbid_duplicate_ngrams: bool = False
    ngram_size: int = 3
    forbid_ignore_ids: tuple[int, ...] = ()
    need_traces: bool = False


@dataclass
class SearchResult:
    tokens: list[int]  # without eos
    score: float  # length-normalised log-probability of the chosen hypothesis
    finished: bool  # False when it ran into max_len
    trace: list[dict] = field(default_factory=list)


def length_norm(length: int, length_penalty: float) -> float:
    return ((5.0 + length) / 6.0) ** length_penalty if length_penalty > 0 else 1.0


@torch.inference_mode()
def beam_search(stepper, source_ids: torch.Tensor, num_source_tokens: torch.Tensor, cfg: SearchConfig) -> list[SearchResult]:
    """Decode a batch. `source_ids` (B, S) are `[CLS] source [SEP]` padded; returns one result per example."""
    if cfg.beam_size < 1:
        raise ValueError("beam_size must be >= 1")
    K = cfg.beam_size
    device = source_ids.device
    B = source_ids.size(0)
    ignore = torch.tensor(sorted(set(cfg.forbid_ignore_ids)), dtype=torch.long, device=device)
    stepper.start(source_ids, num_source_tokens)

    active = list(range(B))  # example ids, in the stepper's row-group order
    group = 1
    beam_scores = torch.zeros(B, dtype=torch.float32, device=device)
    prefixes = source_ids.new_zeros(B, 0)
    prefix_lists: list[list[int]] = [[] for _ in range(B)]
    hyps: list[list[tuple[float, int, list[int], bool]]] = [[] for _ in range(B)]  # (score, order, tokens, fin)
    traces: list[list[dict]] = [[] for _ in range(B)]
    order = 0
    prev = None
    max_norm = length_norm(cfg.max_len, cfg.length_penalty)

    for step in range(1, cfg.max_len + 1):
        log_probs = stepper.step(prev)  # (A * group, V)
        V = log_probs.size(-1)
        if step <= cfg.min_len:
            log_probs[:, cfg.eos_id] = NEG_INF
        if cfg.forbid_duplicate_ngrams and prefixes.size(1) >= cfg.ngram_size:
            log_probs.masked_fill_(repeated_ngram_mask(prefixes, cfg.ngram_size, V, ignore), NEG_INF)
        total = (beam_scores[:, None] + log_probs).view(len(active), group * V)
        n_cand = min(2 * K, group * V)
        top_scores, top_idx = total.topk(n_cand, dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()

        keep, rows, tokens, scores = [], [], [], []
        for a, ex in enumerate(active):
            live, ended = [], []
            for rank in range(n_cand):
                score = top_scores[a][rank]
                if score == NEG_INF:
                    break
                beam, tok = divmod(top_idx[a][rank], V)
                row = a * group + beam
                if tok == cfg.eos_id:
                    if rank < K:
                        norm = score / length_norm(step, cfg.length_penalty)
                        hyps[ex].append((norm, order, list(prefix_lists[row]), True))
                        order += 1
                        ended.append([beam, score])
                else:
                    live.append((row, beam, tok, score))
                    if len(live) == K:
                        break
            if cfg.need_traces:
                traces[ex].append({"step": step, "ptrs": [x[1] for x in live], "wids": [x[2] for x in live],
                                   "scores": [x[3] for x in live], "eos": ended})
            if step == cfg.max_len or not live:
                for row, _, tok, score in live:
                    norm = score / length_norm(step, cfg.length_penalty)
                    hyps[ex].append((norm, order, prefix_lists[row] + [tok], False))
                    order += 1
                continue
            best = sorted(hyps[ex], key=lambda h: (-h[0], h[1]))
            if K == 1:
                done = len(best) >= 1
            else:
                bound = live[0][3] / max_norm if cfg.length_penalty > 0 else live[0][3]
                done = len(best) >= K and bound <= best[K - 1][0]
            if done:
                continue
            while len(live) < K:  # keep exactly K rows per example (only with tiny vocabularies)
                live.append(live[-1][:3] + (NEG_INF,))
            keep.append(a)
            for row, _, tok, score in live:
                rows.append(row)
                tokens.append(tok)
                scores.append(score)
        if not keep:
            break
        example_index = torch.tensor(keep, dtype=torch.long, device=device)
        row_index = torch.tensor(rows, dtype=torch.long, device=device)
        prev = torch.tensor(tokens, dtype=torch.long, device=device)
        stepper.select(example_index, row_index, K)
        prefixes = torch.cat([prefixes.index_select(0, row_index), prev[:, None]], dim=1)
        prefix_lists = [prefix_lists[r] + [t] for r, t in zip(rows, tokens)]
        beam_scores = torch.tensor(scores, dtype=torch.float32, device=device)
        active = [active[a] for a in keep]
        group = K

    results = []
    for ex in range(B):
        if not hyps[ex]:  # nothing could be generated (every token forbidden)
            results.append(SearchResult([], NEG_INF, False, traces[ex]))
            continue
        score, _, toks, fin = sorted(hyps[ex], key=lambda h: (-h[0], h[1]))[0]
        results.append(SearchResult(toks, score, fin, traces[ex]))
    return results
