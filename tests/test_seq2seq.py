"""UniLM seq2seq: attention mask, label smoothing, n-gram blocking, beam search (cached == recompute), data, metrics."""
import itertools
import json
import math
import os

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForMaskedLM, XLMRobertaConfig, XLMRobertaForMaskedLM

from kdcore.cli import UserError
from minilm.beam_search import CachedStepper, RecomputeStepper, SearchConfig, beam_search, repeated_ngram_mask
from minilm.nlg_metrics import (
    coco_rouge_l,
    corpus_bleu,
    group_by_source,
    lcs_length,
    rouge_scores,
    score_files,
    score_question_generation,
    unilm_fix_tokenization,
)
from minilm.seq2seq_data import (
    Seq2SeqTrainDataset,
    StaleCache,
    TrainCollator,
    load_feature_cache,
    load_train_features,
    read_jsonl,
    save_feature_cache,
    tokenizer_fingerprint,
)
from minilm.unilm import UniLMSeq2Seq, label_smoothed_kl, pseudo_mask_attention


# --------------------------------------------------------------------------------------------------------------
# The pseudo-mask attention mask
# --------------------------------------------------------------------------------------------------------------
def test_pseudo_mask_equals_hand_built_matrix():
    # 3 real source tokens + 1 pad; 2 real target tokens + 1 pad; 2 twins + 1 pad.
    #            s0 s1 s2 sP  t0 t1 tP  m0 m1 mP
    want = [
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # s0
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # s1
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],  # s2
        [0, 0, 0, 1, 0, 0, 0, 0, 0, 0],  # source pad: itself only
        [1, 1, 1, 0, 1, 0, 0, 0, 0, 0],  # t0: source + t0
        [1, 1, 1, 0, 1, 1, 0, 0, 0, 0],  # t1: source + t0 t1
        [0, 0, 0, 0, 0, 0, 1, 0, 0, 0],  # target pad
        [1, 1, 1, 0, 0, 0, 0, 1, 0, 0],  # m0: source + itself
        [1, 1, 1, 0, 1, 0, 0, 0, 1, 0],  # m1: source + t0 + itself
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # twin pad
    ]
    got = pseudo_mask_attention(torch.tensor([3]), torch.tensor([2]), source_len=4, target_len=3)
    assert got.shape == (1, 10, 10)
    assert got[0].int().tolist() == want


def _mask_by_rules(n_src, n_tgt, S, T):
    """The mask written out token by token from the rules of the UniLM pseudo-mask objective."""
    kinds = [("src", i) for i in range(S)] + [("tgt", i) for i in range(T)] + [("twin", i) for i in range(T)]

    def real(kind, i):
        return i < (n_src if kind == "src" else n_tgt)

    m = torch.zeros(len(kinds), len(kinds), dtype=torch.bool)
    for q, (qk, qi) in enumerate(kinds):
        for k, (kk, ki) in enumerate(kinds):
            if not real(qk, qi):
                m[q, k] = q == k
            elif not real(kk, ki):
                m[q, k] = False
            elif kk == "src":
                m[q, k] = True
            elif qk == "src":
                m[q, k] = False
            elif qk == "tgt":
                m[q, k] = kk == "tgt" and ki <= qi
            else:  # twin
                m[q, k] = (kk == "tgt" and ki < qi) or (kk == "twin" and ki == qi)
    return m


def test_pseudo_mask_batch_matches_rules():
    n_src, n_tgt = torch.tensor([5, 2, 7]), torch.tensor([1, 4, 3])
    got = pseudo_mask_attention(n_src, n_tgt, source_len=7, target_len=4)
    for b in range(3):
        assert torch.equal(got[b], _mask_by_rules(int(n_src[b]), int(n_tgt[b]), 7, 4))


def _tiny_bert(vocab=60, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, **kw)
    return BertForMaskedLM(cfg).eval()


def _tiny_xlmr(vocab=60, seed=0):
    torch.manual_seed(seed)
    cfg = XLMRobertaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, max_position_embeddings=66, type_vocab_size=1, pad_token_id=1)
    return XLMRobertaForMaskedLM(cfg).eval()


def test_twins_see_source_and_earlier_targets_only():
    model = UniLMSeq2Seq(_tiny_bert(), pad_token_id=0, mask_token_id=4).double()
    g = torch.Generator().manual_seed(1)
    src = torch.randint(5, 60, (1, 6), generator=g)
    tgt = torch.randint(5, 60, (1, 5), generator=g)
    twins = torch.full_like(tgt, 4)
    n_src, n_tgt = torch.tensor([6]), torch.tensor([5])
    with torch.no_grad():
        base = model.pseudo_hidden_states(src, tgt, twins, n_src, n_tgt)
        later = tgt.clone()
        later[0, 3:] = torch.randint(5, 60, (2,), generator=g)  # change y_3, y_4
        h_later = model.pseudo_hidden_states(src, later, twins, n_src, n_tgt)
        other_src = src.clone()
        other_src[0, 2] = (src[0, 2] + 1 - 5) % 55 + 5
        h_src = model.pseudo_hidden_states(other_src, tgt, twins, n_src, n_tgt)
    # twins 0..3 see y_0..y_2 only: unchanged; twin 4 sees y_3: changed. Every twin sees the source.
    torch.testing.assert_close(h_later[:, :4], base[:, :4], rtol=0, atol=1e-12)
    assert (h_later[:, 4] - base[:, 4]).abs().max() > 1e-6
    assert ((h_src - base).abs().amax(-1) > 1e-6).all()


# --------------------------------------------------------------------------------------------------------------
# Label smoothing
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pad_id", [0, 1])
def test_label_smoothing_matches_explicit_distribution(pad_id):
    torch.manual_seed(0)
    V, eps = 11, 0.1
    log_probs = F.log_softmax(torch.randn(2, 5, V, dtype=torch.float64), -1)
    labels = torch.tensor([[3, 7, pad_id, 9, 2], [pad_id, 5, 5, 10, 4]])
    got = label_smoothed_kl(log_probs, labels, eps, pad_id)
    for b, t in itertools.product(range(2), range(5)):
        y = int(labels[b, t])
        if y == pad_id:
            assert got[b, t] == 0
            continue
        q = torch.full((V,), eps / (V - 2), dtype=torch.float64)
        q[pad_id] = 0.0  # the real pad id gets no mass ...
        q[y] = 1 - eps
        assert abs(float(q.sum()) - 1.0) < 1e-12  # ... and q is still a distribution
        want = sum(float(q[w] * (math.log(q[w]) - log_probs[b, t, w])) for w in range(V) if q[w] > 0)
        assert abs(float(got[b, t]) - want) < 1e-10


def test_label_smoothing_zero_is_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(4, 7, dtype=torch.float64)
    labels = torch.tensor([1, 3, 0, 6])
    got = label_smoothed_kl(F.log_softmax(logits, -1), labels, 0.0, pad_id=1)
    want = F.cross_entropy(logits, labels, reduction="none", ignore_index=1)
    torch.testing.assert_close(got, want)


def test_model_loss_is_masked_mean_over_real_target_tokens():
    model = UniLMSeq2Seq(_tiny_xlmr(), pad_token_id=1, mask_token_id=4, label_smoothing=0.1).double()
    batch = {
        "source_ids": torch.tensor([[0, 7, 8, 9, 2], [0, 11, 2, 1, 1]]),
        "target_ids": torch.tensor([[12, 13, 2], [14, 2, 1]]),
        "pseudo_ids": torch.tensor([[4, 4, 4], [4, 4, 1]]),
        "label_ids": torch.tensor([[12, 13, 2], [14, 2, 1]]),
        "num_source_tokens": torch.tensor([5, 3]),
        "num_target_tokens": torch.tensor([3, 2]),
    }
    with torch.no_grad():
        out = model(**batch)
        hidden = model.pseudo_hidden_states(*(batch[k] for k in ("source_ids", "target_ids", "pseudo_ids",
                                                                  "num_source_tokens", "num_target_tokens")))
        lp = F.log_softmax(model.lm_head(hidden).double(), -1)
    per_token = [label_smoothed_kl(lp[b, t], batch["label_ids"][b, t], 0.1, 1)
                 for b, t in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]]
    torch.testing.assert_close(out["loss"].double(), sum(per_token) / 5, rtol=1e-5, atol=1e-6)
    nll = -sum(lp[b, t, batch["label_ids"][b, t]] for b, t in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]) / 5
    torch.testing.assert_close(out["nll"].double(), nll, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------
# n-gram blocking
# --------------------------------------------------------------------------------------------------------------
def _banned_by_loops(seq, n, ignore):
    if len(seq) < n:
        return set()
    tail = seq[len(seq) - (n - 1):] if n > 1 else []
    if any(t in ignore for t in tail):
        return set()
    out = set()
    for i in range(len(seq) - n + 1):
        if seq[i:i + n - 1] == tail and seq[i + n - 1] not in ignore:
            out.add(seq[i + n - 1])
    return out


@pytest.mark.parametrize("n", [1, 2, 3])
def test_repeated_ngram_mask_matches_loops(n):
    g = torch.Generator().manual_seed(n)
    prefixes = torch.randint(0, 5, (40, 9), generator=g)  # small alphabet: many repeats
    ignore = [3]
    got = repeated_ngram_mask(prefixes, n, vocab_size=6, ignore_ids=torch.tensor(ignore))
    for row in range(40):
        seq = prefixes[row].tolist()
        assert set(torch.nonzero(got[row]).flatten().tolist()) == _banned_by_loops(seq, n, ignore)
    assert got.any()


# --------------------------------------------------------------------------------------------------------------
# Beam search logic against exhaustive search (a stepper whose log-probs depend on the whole prefix)
# --------------------------------------------------------------------------------------------------------------
class TableStepper:
    def __init__(self, vocab, seed=0):
        self.vocab, self.seed = vocab, seed
        self.rows_per_step = []

    def logp(self, ex, prefix):
        g = torch.Generator().manual_seed(hash((self.seed, ex, tuple(prefix))) % (2**31))
        return F.log_softmax(torch.randn(self.vocab, generator=g) * 2, -1)

    def start(self, source_ids, num_source_tokens):
        self.rows = [(ex, []) for ex in range(source_ids.size(0))]

    def step(self, prev):
        if prev is not None:
            self.rows = [(ex, p + [int(t)]) for (ex, p), t in zip(self.rows, prev)]
        self.rows_per_step.append(len(self.rows))
        return torch.stack([self.logp(ex, p) for ex, p in self.rows])

    def select(self, example_index, row_index, group):
        self.rows = [self.rows[r] for r in row_index.tolist()]


def _exhaustive_best(stepper, ex, cfg, vocab):
    best = (-math.inf, None)
    toks = [t for t in range(vocab) if t != cfg.eos_id]
    for length in range(1, cfg.max_len + 1):
        for body in itertools.product(toks, repeat=length - 1):
            # a hypothesis ends with eos, or stops unfinished at max_len
            for last in [cfg.eos_id] + (toks if length == cfg.max_len else []):
                seq = list(body) + [last]
                ok, score = True, 0.0
                for i, tok in enumerate(seq):
                    if tok == cfg.eos_id and i + 1 <= cfg.min_len:
                        ok = False
                    if cfg.forbid_duplicate_ngrams and tok in _banned_by_loops(seq[:i], cfg.ngram_size, cfg.forbid_ignore_ids):
                        ok = False
                    score += float(stepper.logp(ex, seq[:i])[tok])
                if not ok:
                    continue
                norm = ((5 + len(seq)) / 6) ** cfg.length_penalty if cfg.length_penalty > 0 else 1.0
                out = seq[:-1] if seq[-1] == cfg.eos_id else seq
                if score / norm > best[0] + 1e-9:
                    best = (score / norm, out)
    return best


@pytest.mark.parametrize("lp,block,min_len", [(0.0, False, 1), (1.0, False, 2), (0.0, True, 1)])
def test_wide_beam_finds_exhaustive_optimum(lp, block, min_len):
    vocab, L = 4, 4
    # 64 beams: more than the candidates of any step, so no hypothesis is ever pruned
    cfg = SearchConfig(eos_id=0, beam_size=64, max_len=L, min_len=min_len, length_penalty=lp,
                       forbid_duplicate_ngrams=block, ngram_size=2, forbid_ignore_ids=(3,))
    stepper = TableStepper(vocab, seed=7)
    results = beam_search(stepper, torch.zeros(3, 2, dtype=torch.long), torch.tensor([2, 2, 2]), cfg)
    for ex, res in enumerate(results):
        score, tokens = _exhaustive_best(stepper, ex, cfg, vocab)
        assert res.tokens == tokens
        assert abs(res.score - score) < 1e-4


def test_greedy_is_argmax_and_finished_examples_leave_the_batch():
    vocab = 6
    stepper = TableStepper(vocab, seed=3)
    cfg = SearchConfig(eos_id=0, beam_size=1, max_len=30, min_len=1)
    results = beam_search(stepper, torch.zeros(4, 2, dtype=torch.long), torch.tensor([2] * 4), cfg)
    lengths = []
    for ex, res in enumerate(results):
        seq = []
        for step in range(30):
            lp = stepper.logp(ex, seq).clone()
            if step == 0:
                lp[0] = -math.inf
            tok = int(lp.argmax())
            if tok == 0:
                break
            seq.append(tok)
        assert res.tokens == seq and res.finished
        lengths.append(len(seq) + 1)
    # one row per unfinished example at every step: finished examples stopped costing compute
    assert stepper.rows_per_step == [sum(1 for n in lengths if n > s) for s in range(max(lengths))]
    assert len(stepper.rows_per_step) < 30


# --------------------------------------------------------------------------------------------------------------
# Cached decoding == recomputing everything each step (tiny real models)
# --------------------------------------------------------------------------------------------------------------
def _sources(pad_id, cls_id, sep_id, lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths) + 2
    ids = torch.full((len(lengths), S), pad_id, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0], ids[i, n + 1] = cls_id, sep_id
        ids[i, 1:n + 1] = torch.randint(5, vocab, (n,), generator=g)
    return ids, torch.tensor([n + 2 for n in lengths])


EOS_BOOST = {("bert", 1): 5.5, ("xlmr", 1): 10.0, ("bert", 4): 3.0, ("xlmr", 4): 3.0}


@pytest.mark.parametrize("arch", ["bert", "xlmr"])
@pytest.mark.parametrize("beam,block,lp", [(1, False, 0.0), (1, True, 0.0), (4, True, 0.0), (4, True, 1.0)])
def test_cached_decoding_equals_recompute(arch, beam, block, lp):
    if arch == "bert":
        mlm, pad, cls, sep, mask = _tiny_bert(seed=beam), 0, 1, 2, 4
    else:
        mlm, pad, cls, sep, mask = _tiny_xlmr(seed=beam), 1, 0, 2, 4
    head = mlm.cls.predictions if arch == "bert" else mlm.lm_head
    with torch.no_grad():  # peaked distributions, and [SEP] likely enough that hypotheses end at different steps
        (head.transform.LayerNorm if arch == "bert" else head.layer_norm).weight.mul_(30)
        head.bias[sep] += EOS_BOOST[arch, beam]
    model = UniLMSeq2Seq(mlm, pad_token_id=pad, mask_token_id=mask).double()
    src, n_src = _sources(pad, cls, sep, [9, 3, 14, 6], vocab=60, seed=beam)
    cfg = SearchConfig(eos_id=sep, beam_size=beam, max_len=12, min_len=2, length_penalty=lp,
                       forbid_duplicate_ngrams=block, ngram_size=2, forbid_ignore_ids=(7,), need_traces=True)
    cached = beam_search(CachedStepper(model), src, n_src, cfg)
    recomputed = beam_search(RecomputeStepper(model), src, n_src, cfg)
    assert [r.tokens for r in cached] == [r.tokens for r in recomputed]
    for a, b in zip(cached, recomputed):
        assert [(s["wids"], s["ptrs"]) for s in a.trace] == [(s["wids"], s["ptrs"]) for s in b.trace]
        assert abs(a.score - b.score) < 1e-5
        assert len(a.tokens) >= 2  # --min_len
        if block:
            grams = [tuple(a.tokens[i:i + 2]) for i in range(len(a.tokens) - 1) if 7 not in a.tokens[i:i + 2]]
            assert len(grams) == len(set(grams))
    assert any(r.finished for r in cached) and len({len(r.tokens) for r in cached}) > 1


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
def test_read_jsonl_errors(tmp_path):
    empty = tmp_path / "empty.json"
    empty.write_text("\n")
    with pytest.raises(UserError, match="no examples"):
        read_jsonl(str(empty), require_target=False)
    no_src = tmp_path / "nosrc.json"
    no_src.write_text('{"src": "a", "tgt": "b"}\n{"tgt": "c"}\n')
    with pytest.raises(UserError, match=r"nosrc.json:2: no \"src\""):
        read_jsonl(str(no_src), require_target=False)
    bad = tmp_path / "bad.json"
    bad.write_text('{"src": "a", "tgt": "b"}\n{"src": \n')
    with pytest.raises(UserError, match="bad.json:2: not valid JSON"):
        read_jsonl(str(bad), require_target=True)
    no_tgt = tmp_path / "notgt.json"
    no_tgt.write_text('{"src": "a"}\n')
    assert read_jsonl(str(no_tgt), require_target=False)[0]["src"] == "a"
    with pytest.raises(UserError, match="notgt.json:1: no \"tgt\""):
        read_jsonl(str(no_tgt), require_target=True)


def test_feature_cache_roundtrip_is_safetensors(tmp_path, bert_tokenizer):
    feats = {"source_ids": [[5, 6, 7], [], [8]], "target_ids": [[9], [10, 11], []]}
    meta = tokenizer_fingerprint(bert_tokenizer)
    path = str(tmp_path / "cache.features.pt")  # the seed's file name: the content is safetensors anyway
    save_feature_cache(path, feats, meta)
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        assert f.metadata()["format"] == "kd-seq2seq-features-v1"
    assert load_feature_cache(path, meta) == feats
    with pytest.raises(StaleCache, match="different tokenizer"):
        load_feature_cache(path, {**meta, "vocab_size": "7"})
    pickled = tmp_path / "old.pt"
    torch.save([{"source_ids": [1]}], pickled)
    with pytest.raises(UserError, match="never loaded"):
        load_feature_cache(str(pickled), meta)


def test_feature_cache_is_rebuilt_for_another_train_file(tmp_path, bert_tokenizer):
    """The cache is keyed by the training file's bytes: another file (same name) is tokenised afresh."""
    train = tmp_path / "train.json"
    cache = str(tmp_path / "cache.safetensors")
    train.write_text('{"src": "hello world", "tgt": "hi"}\n')
    first = load_train_features(str(train), bert_tokenizer, cache)
    assert load_train_features(str(train), bert_tokenizer, cache) == first  # reused
    train.write_text('{"src": "an entirely different example", "tgt": "other"}\n')
    second = load_train_features(str(train), bert_tokenizer, cache)
    expected = bert_tokenizer("an entirely different example", add_special_tokens=False)["input_ids"]
    assert second["source_ids"] == [expected] and second != first
    assert load_feature_cache(cache, {}) == second  # the rebuilt cache replaced the stale one


def test_train_items_truncate_add_specials_and_noise(bert_tokenizer):
    tok = bert_tokenizer
    feats = {"source_ids": [list(range(1000, 1020))], "target_ids": [list(range(2000, 2300))]}
    ds = Seq2SeqTrainDataset(feats, max_source_len=8, max_target_len=200, tokenizer=tok,
                             keep_prob=0.1, random_prob=0.1, target_mask_prob=0.5)
    torch.manual_seed(0)
    item = ds[0]
    assert item["source_ids"].tolist() == [tok.cls_token_id] + list(range(1000, 1006)) + [tok.sep_token_id]
    labels = item["label_ids"].tolist()
    assert labels == list(range(2000, 2199)) + [tok.sep_token_id]
    pseudo, target = item["pseudo_ids"], item["target_ids"]
    is_mask = (pseudo == tok.mask_token_id).float().mean().item()
    is_keep = (pseudo == item["label_ids"]).float().mean().item()
    assert 0.7 < is_mask < 0.9 and 0.03 < is_keep < 0.2
    noised = target != item["label_ids"]
    assert torch.equal(target[noised], pseudo[noised])  # real-side noise is the twin's noised token
    assert 0.3 < (target == pseudo).float().mean().item() < 0.8
    batch = TrainCollator(tok.pad_token_id)([item, ds[0]])
    assert batch["num_target_tokens"].tolist() == [200, 200]


# --------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------
def test_unilm_fix_tokenization_rules():
    # XSum's rules (summarisation): contractions, numbers, "..."; no hyphen joining, no quotes, no brackets
    assert unilm_fix_tokenization("he don ' t like the u . s . it ' s 3 , 000 , 000 or 3 . 5 . . .") == \
        "he do n't like the u . s . it 's 3,000,000 or 3.5 ..."  # lower-case "u . s ." is never joined
    assert unilm_fix_tokenization('a well - known ( big ) " idea "') == 'a well - known ( big ) " idea "'
    assert unilm_fix_tokenization("we ' re here") == "we ' re here"  # only 's, 'd, 'll are joined
    # QG (unilm-v1 qg/eval.py): PTB brackets and quotes, HTML escapes, [UNK], hyphen joining
    assert unilm_fix_tokenization('a well - known ( big ) " idea "', "qg") == "a well-known -lrb- big -rrb- `` idea ''"
    assert unilm_fix_tokenization("[UNK] & co ' re < 3", "qg") == "UNK &amp; co ` re &lt; 3"
    assert unilm_fix_tokenization("- a - - b - ,", "qg") == "- a -- b - ,"
    assert unilm_fix_tokenization("15 -- 1 record", "qg") == "15 -- 1 record"
    # the upper-case rule as the original runs it: joins "U . S ." and emits the closing period once more
    for task in ("qg", "summarization"):
        assert unilm_fix_tokenization("the U . S . army", task) == "the U.S. . army"
    # CNN/DM: upper-case PTB brackets
    assert unilm_fix_tokenization("( a ) well - off", "cnndm") == "-LRB- a -RRB- well-off"


def test_coco_rouge_l_by_hand():
    assert lcs_length("a b c d".split(), "a x c d b".split()) == 3
    # one reference: LCS("a b c d", "a b x") = 2, P = 2/4, R = 2/3, F_beta with beta = 1.2
    p, r, b2 = 2 / 4, 2 / 3, 1.2 ** 2
    assert coco_rouge_l("a b c d", ["a b x"]) == pytest.approx((1 + b2) * p * r / (r + b2 * p))
    # P and R are maximised over the references separately: P = 1 from the long reference, R = 1 from the short
    # one, so coco-caption gives 1.0 where rouge-score's best single-reference F1 is lower
    cand = "what is the capital of france ?"
    refs = ["what is the capital ?", "what is the capital city of france today ?"]
    assert coco_rouge_l(cand, refs) == pytest.approx(1.0)
    # rouge-score drops "?": ref1 P 4/6 R 1 -> F 0.8; ref2 LCS 6 of 8 -> P 1 R 3/4 -> F 6/7 (the best)
    assert rouge_scores([cand], [refs])["rougeL"] == pytest.approx(100 * 6 / 7)
    # no stemming, case and punctuation count
    assert coco_rouge_l("cats run", ["cat runs"]) == 0.0
    assert coco_rouge_l("", ["a"]) == 0.0


def test_qg_rouge_l_is_coco_caption_averaged_over_groups(shared_data):
    srcs = ["s1", "s1", "s2"]
    refs = ["what is the capital ?", "what is the capital city of france today ?", "who wrote it ?"]
    preds = ["x", "What is the capital of France ?", "who wrote the book ?"]  # the last of each group counts
    out = score_question_generation(preds, refs, srcs, nltk_data=os.path.join(shared_data, "nltk_data"))
    # group s1 (lower-cased prediction): 1.0 (above); group s2: LCS 3 ("who wrote ?"), P 3/5, R 3/4
    p, r, b2 = 3 / 5, 3 / 4, 1.44
    want = 100 * (1.0 + (1 + b2) * p * r / (r + b2 * p)) / 2
    assert out["rougeL"] == pytest.approx(want)
    assert out["rougeL_rouge_score"] == pytest.approx(100 * (6 / 7 + 2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3)) / 2)


def test_rouge_hand_computed():
    got = rouge_scores(["the cat sat on the mat"], ["the cat lay on the mat"])
    # unigrams: 5 of 6 match both ways; bigrams: 3 of 5 (the cat, on the, the mat); LCS "the cat on the mat" = 5
    assert got["rouge1"] == pytest.approx(100 * 5 / 6)
    assert got["rouge2"] == pytest.approx(60.0)
    assert got["rougeL"] == pytest.approx(100 * 5 / 6)
    assert rouge_scores(["cats running"], ["cat run"])["rouge1"] == pytest.approx(100.0)  # Porter stemming


@pytest.mark.filterwarnings("ignore:\\nThe hypothesis contains 0 counts")
def test_bleu_hand_computed_and_against_nltk():
    hyp = "the cat is on the mat".split()
    refs = ["there is a cat on the mat".split(), "the cat sits on the mat".split()]
    # clipped matches / totals: 1-gram 5/6, 2-gram 3/5, 3-gram 1/4 (on the mat), 4-gram 0/3 -> BLEU 0
    assert corpus_bleu([hyp], [refs]) == 0.0
    hyp2 = "the cat sits on the mat today".split()
    # 1-gram 6/7, 2-gram 5/6, 3-gram 4/5, 4-gram 3/4; closest ref length 7 -> BP 1
    want = 100 * math.exp((math.log(6 / 7) + math.log(5 / 6) + math.log(4 / 5) + math.log(3 / 4)) / 4)
    assert corpus_bleu([hyp2], [refs]) == pytest.approx(want)
    from nltk.translate.bleu_score import corpus_bleu as nltk_bleu

    g = torch.Generator().manual_seed(0)
    words = "a b c d e f".split()
    hyps, refss = [], []
    for _ in range(20):
        hyps.append([words[i] for i in torch.randint(0, 6, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g)])
        refss.append([[words[i] for i in torch.randint(0, 6, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g)]
                      for _ in range(2)])
    assert corpus_bleu(hyps, refss) == pytest.approx(100 * nltk_bleu(refss, hyps), rel=1e-9)


def test_qg_groups_references_per_source_sentence(shared_data):
    groups = group_by_source(["q1", "q2", "q3"], ["r1", "r2", "r3"], ["S one", "s one ", "s two"])
    assert groups == [{"pred": "q2", "refs": ["r1", "r2"]}, {"pred": "q3", "refs": ["r3"]}]
    rows = [json.loads(line) for line in itertools.islice(open(os.path.join(shared_data, "seq2seq/qg/train.json")), 40)]
    refs = [r["tgt"] for r in rows]
    srcs = [r["src"] for r in rows]
    perfect = score_question_generation(refs, refs, srcs, nltk_data=os.path.join(shared_data, "nltk_data"))
    assert perfect["groups"] < len(rows)
    assert perfect["meteor"] is not None and perfect["meteor"] > 50
    from nltk.translate.meteor_score import meteor_score

    grouped = group_by_source(refs, refs, srcs)
    want = 100 * sum(meteor_score([r.split() for r in g["refs"]], g["pred"].split()) for g in grouped) / len(grouped)
    assert perfect["meteor"] == pytest.approx(want)
    assert perfect["bleu4"] > 50 and perfect["rougeL"] > 80


def test_score_files_reports_without_wordnet(tmp_path, monkeypatch):
    import minilm.nlg_metrics as metrics

    gold = tmp_path / "gold.json"
    gold.write_text('{"src": "a b", "tgt": "what is a ?"}\n{"src": "c d", "tgt": "who is c ?"}\n')
    pred = tmp_path / "pred.txt"
    pred.write_text("what is a ?\nwho is d ?\n")
    monkeypatch.setattr(metrics, "find_wordnet", lambda nltk_data=None: None)
    out = score_files(str(pred), str(gold), "qg")
    assert out["meteor"] is None and "WordNet not found" in out["meteor_note"]
    assert out["bleu4"] > 0 and out["groups"] == 2
    pred.write_text("only one line\n")
    with pytest.raises(UserError, match="1 lines"):
        score_files(str(pred), str(gold), "qg")
