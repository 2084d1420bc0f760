"""Test helper: write a small TinyBERT-format pregenerated data folder from real text.

Not the real pregeneration (pregenerate_training_data.py): each paragraph line becomes one example
`[CLS] A [SEP] B [SEP]` (A/B split at a random token), with ~15% of the tokens replaced by the mask token, in the
exact file format the reader consumes (epoch_N.json lines + epoch_N_metrics.json).
"""
import json
import os
import random


def real_paragraphs(shared_data, count, skip=0, min_chars=200):
    """The first `count` substantial paragraph lines of ../shared/data/corpus/wiki.txt (after `skip` of them)."""
    out = []
    with open(os.path.join(shared_data, "corpus", "wiki.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if len(line) >= min_chars and not line.startswith(("{{", "[[", "|", "=")):
                out.append(line)
                if len(out) == skip + count:
                    break
    return out[skip:]


def write_pregenerated(folder, tokenizer, paragraphs, epochs=1, max_seq_len=64, seed=0, mask_prob=0.15):
    os.makedirs(folder, exist_ok=True)
    cls, sep, mask = tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token
    tokenized = [tokenizer.tokenize(p) for p in paragraphs]
    for epoch in range(epochs):
        rng = random.Random(seed * 1000 + epoch)
        lines = []
        for toks in tokenized:
            toks = toks[: rng.randint(8, max_seq_len - 3)]  # varied lengths, so batches carry padding
            if len(toks) < 4:
                continue
            cut = rng.randint(1, len(toks) - 1)
            a, b = toks[:cut], toks[cut:]
            tokens = [cls] + a + [sep] + b + [sep]
            segment_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            candidates = [i for i, t in enumerate(tokens) if t not in (cls, sep)]
            positions = sorted(rng.sample(candidates, max(1, round(len(candidates) * mask_prob))))
            labels = [tokens[p] for p in positions]
            for p in positions:
                tokens[p] = mask
            lines.append({"tokens": tokens, "segment_ids": segment_ids, "is_random_next": rng.random() < 0.5,
                          "masked_lm_positions": positions, "masked_lm_labels": labels})
        with open(os.path.join(folder, f"epoch_{epoch}.json"), "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line) + "\n")
        with open(os.path.join(folder, f"epoch_{epoch}_metrics.json"), "w", encoding="utf-8") as f:
            json.dump({"num_training_examples": len(lines), "max_seq_len": max_seq_len}, f)
    return str(folder)
