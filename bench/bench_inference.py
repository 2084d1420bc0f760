"""Inference speed of the standard model shapes at sequence length 128, as a ratio to BERT-base.

    python bench/bench_inference.py [--batch_size 8] [--repeat 5] [--models NAME ...]
                                    [--out bench/results/inference.json]
"""
import argparse
import os

import torch
from transformers import BertConfig, BertModel

from common import machine_info, report, timed_round_robin
from kdcore.cli import ArgumentParser

SHAPES = {  # name: (layers, hidden, heads, intermediate)
    "BERT-base 12x768": (12, 768, 12, 3072),
    "MiniLM 12x384": (12, 384, 12, 1536),
    "MiniLM 6x384": (6, 384, 12, 1536),
    "MiniLM 6x768": (6, 768, 12, 3072),
    "TinyBERT 4x312": (4, 312, 12, 1200),
}


def main():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch_size", type=int, default=8, identifies=False, range=">=1")
    p.add_argument("--seq_len", type=int, default=128, identifies=False, range=">=1")
    p.add_argument("--repeat", type=int, default=5, identifies=False, range=">=1")
    p.add_argument("--models", nargs="+", choices=list(SHAPES), default=list(SHAPES),
                   help="shapes to time (the first is the base of the ratio; default: all)", identifies=False)
    p.add_argument("--out", default=os.path.join("bench", "results", "inference.json"), identifies=False)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ids = torch.randint(1000, 30000, (args.batch_size, args.seq_len), device=device)
    mask = torch.ones_like(ids)
    models = {}
    for name in args.models:
        layers, hidden, heads, inter = SHAPES[name]
        config = BertConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                            intermediate_size=inter)
        models[name] = BertModel(config).to(device).eval()

    def forward(model):
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask)

    seconds = timed_round_robin({n: (lambda m=m: forward(m)) for n, m in models.items()}, repeat=args.repeat)
    rows = [{"model": n, "params_M": sum(p.numel() for p in m.parameters()) / 1e6,
             "sentences_per_s": args.batch_size / seconds[n]} for n, m in models.items()]
    base = rows[0]["sentences_per_s"]
    for r in rows:
        r["speedup_vs_bert_base"] = r["sentences_per_s"] / base  # (vs the first model when --models omits it)
    report(f"Inference at seq {args.seq_len}, batch {args.batch_size}", rows,
           ["model", "params_M", "sentences_per_s", "speedup_vs_bert_base"], args.out,
           {"machine": machine_info(device), "seq_len": args.seq_len, "batch_size": args.batch_size})


if __name__ == "__main__":
    main()
