"""General distillation, compared: does it beat copying the teacher's layers, and which method goes furthest per token?

Every method starts from the same student (the pretrained teacher's embeddings and layers 2, 4, 6; MiniLMv2 also
from random weights), reads the same text (the four raw corpora of DATA_DIR/corpus, tokenised once into packed
128-token blocks for the methods that read pregenerated data, read line by line by the sentence-embedding ones) and
sees the same number of real tokens. Each general student is then scored the same way:

  a. STS-B dev zero-shot Spearman (mean pooling; nothing trained on STS);
  b. SST-2 after the demo's fine-tuning recipe (run_glue.py, gold labels; best checkpoint on the held-out slice);
  c. SST-2 after the demo's task-distillation recipe from the fine-tuned teacher (stage 1, then the Hinton mix),
     for the general student whose (b) is best on the held-out slice, beside the same pipeline from the start
     itself (no general distillation).

The baselines (the start, random init, the teacher) and the task-distillation-only student come from the demo's
own rows: `demo.py --general` runs this after the demo's stages, in the same output folder.
"""
from __future__ import annotations

import glob
import json
import math
import os
import statistics
import time
from dataclasses import dataclass
from typing import Callable

from kdcore.files import atomic_write_json, atomic_write_text, read_text_lines
from kdcore.modeling import load_tokenizer
from pipelines.reporting import format_stat, mean_spread, plot_loss_curves, save_figure

# (key, label, script, the method's own arguments). Everything else (start, corpus, budget, lr) is shared.
GENERAL_METHODS = (
    ("tinybert", "TinyBERT: embeddings + hidden states + attention scores", "general_distill.py",
     ["--distill_method", "tinybert"]),
    ("minilm", "MiniLM: last-layer attention + value relations", "general_distill.py", ["--distill_method", "minilm"]),
    ("minilmv2", "MiniLMv2: Q-Q / K-K / V-V relations", "general_distill.py", ["--distill_method", "minilmv2"]),
    ("embedding", "sentence-embedding MSE", "distill_embeddings.py", ["--relation_weight", 0]),
    ("minilmv2_embedding", "MiniLMv2 relations + sentence-embedding MSE", "distill_embeddings.py",
     ["--relation_weight", 1]),
    ("minilmv2_random", "MiniLMv2 from random init", "general_distill.py", ["--distill_method", "minilmv2"]),
)
RANDOM_START = {"minilmv2_random"}
STS_TARGET = 84.0  # STS-B zero-shot Spearman x 100 that a general student should reach (97 % of the teacher's)


@dataclass
class DemoStages:
    """What the comparison borrows from the demo that runs it: its stage runner, its recipes and its scores."""

    out: str
    seeds: list[int]
    teacher: str
    student_config: str
    init_layers: str
    corpus_files: list[str]
    packed: str  # the packed 128-token stream of the corpora
    run_chains: Callable  # run_chains([[(folder, name, script, argv, seed), ...], ...]): chains side by side
    finetune_args: Callable  # finetune_args(init) -> run_glue.py arguments of the demo's student recipe
    task_distill_chain: Callable  # task_distill_chain(start, prefix, seed) -> [(folder, name, script, argv), ...]
    sts: Callable  # sts(folder) -> STS-B dev zero-shot Spearman
    dev_acc: Callable  # dev_acc(folder) -> SST-2 dev accuracy
    heldout_acc: Callable  # heldout_acc(folder) -> SST-2 held-out accuracy of a run's kept model
    times: dict


def mean_real_tokens_per_line(files: list[str], tokenizer_dir: str, max_seq_length: int, cache: str) -> float:
    """Mean real tokens ([CLS] and [SEP] included, truncated at `max_seq_length`) of the non-blank lines of `files`:
    how many steps of line batches see as many tokens as the packed methods. Cached in `cache`, keyed by the files'
    sizes and the length."""
    key = json.dumps([[os.path.abspath(f), os.path.getsize(f)] for f in files] + [max_seq_length])
    if os.path.isfile(cache):
        with open(cache) as f:
            stored = json.load(f)
        if stored.get("key") == key:
            return stored["mean"]
    tokenizer = load_tokenizer(tokenizer_dir, "--teacher_model")
    lines = [line.strip() for f in files for line in read_text_lines(f, "--corpus") if line.strip()]
    lengths = [min(len(ids), max_seq_length) for ids in
               tokenizer(lines, add_special_tokens=True, truncation=False)["input_ids"]]
    mean = statistics.fmean(lengths)
    atomic_write_json({"key": key, "mean": mean, "lines": len(lines)}, cache)
    return mean


def general_steps(tokens: int, batch_size: int, tokens_per_example: float) -> int:
    """Optimisation steps that see `tokens` real tokens at `batch_size` examples of `tokens_per_example` each."""
    return max(1, round(tokens / (batch_size * tokens_per_example)))


def general_args(key: str, script: str, method_args: list, d: DemoStages, steps: int, batch_size: int, lr: float,
                 warmup: float, seq_len: int, log_every: int) -> list:
    start = ["--student_model", d.student_config, "--student_init",
             "random" if key in RANDOM_START else "teacher_layers"]
    if key not in RANDOM_START:
        start += ["--init_layers", d.init_layers]
    shared = ["--teacher_model", d.teacher, *start, "--max_steps", steps, "--train_batch_size", batch_size,
              "--learning_rate", lr, "--warmup_proportion", warmup, "--logging_steps", log_every, *method_args]
    if script == "general_distill.py":
        return [*shared, "--pregenerated_data", d.packed]
    return [*shared, "--train_text", *d.corpus_files, "--max_seq_length", seq_len]


def run_general_comparison(d: DemoStages, tokens: int, batch_size: int, seq_len: int, lr: float, warmup: float,
                           log_every: int, budget_tag: str = "") -> dict:
    """Run every method for every seed, score it (a, b), then the task-distillation pipeline (c) for the best.

    `budget_tag` names the folders and result files of a budget other than the scale's (e.g. "_204800tok"), so runs
    at several budgets share the demo's other stages and never each other's."""
    line_tokens = mean_real_tokens_per_line(d.corpus_files, d.teacher, seq_len,
                                            os.path.join(d.out, "corpus_line_tokens.json"))
    budget = {}
    for key, _, script, _ in GENERAL_METHODS:
        per_example = seq_len if script == "general_distill.py" else line_tokens
        steps = general_steps(tokens, batch_size, per_example)
        budget[key] = {"steps": steps, "tokens": round(steps * batch_size * per_example)}

    def folder(seed, name):
        return os.path.join(d.out, f"seed{seed}", name)

    def tagged(key, what=""):  # a method's folders at this budget: general[_<tag>]_<key>[_sst2 | _kd_...]
        return f"general{budget_tag}_{key}{what}"

    def chain(seed, key, script, method_args):  # distil, then fine-tune on SST-2 (b)
        general = folder(seed, tagged(key))
        return [(general, f"seed{seed}_{tagged(key)}", script,
                 general_args(key, script, method_args, d, budget[key]["steps"], batch_size, lr, warmup, seq_len,
                              log_every)),
                (folder(seed, tagged(key, "_sst2")), f"seed{seed}_{tagged(key, '_sst2')}", "run_glue.py",
                 d.finetune_args(general))]

    # Phase 1: every method and seed (the slowest methods first, so the pool drains evenly).
    d.run_chains([[(*st, seed) for st in chain(seed, key, script, method_args)]
                for key, _, script, method_args in GENERAL_METHODS for seed in d.seeds])
    # Phase 2: the task-distillation pipeline (c) for the general student that fine-tunes best on the held-out slice,
    # and for the start itself (the same pipeline without general distillation).
    heldout = {key: statistics.fmean(d.heldout_acc(folder(s, tagged(key, "_sst2"))) for s in d.seeds)
               for key, *_ in GENERAL_METHODS}
    best = max(heldout, key=heldout.get)
    start = os.path.join(d.out, "student_teacher_layers")
    d.run_chains([[(*st, seed) for st in d.task_distill_chain(general_start, prefix, seed)]
                for general_start_of, prefix in ((lambda s: folder(s, tagged(best)), tagged(best, "_kd")),
                                                 (lambda s: start, "start_kd"))
                for seed in d.seeds for general_start in [general_start_of(seed)]])

    def wall(name):
        return statistics.fmean(d.times.get(f"seed{s}_{name}", float("nan")) for s in d.seeds)

    rows = []
    for key, label, script, _ in GENERAL_METHODS:
        row = {"key": key, "method": label, "start": "random init" if key in RANDOM_START else
               f"teacher layers {d.init_layers}", "tokens": budget[key]["tokens"], "steps": budget[key]["steps"],
               "wall_seconds": wall(tagged(key)),
               "stsb_spearman": mean_spread([d.sts(folder(s, tagged(key))) for s in d.seeds]),
               "sst2_heldout_after_finetuning": mean_spread([d.heldout_acc(folder(s, tagged(key, "_sst2")))
                                                        for s in d.seeds]),
               "sst2_dev_after_finetuning": mean_spread([d.dev_acc(folder(s, tagged(key, "_sst2"))) for s in d.seeds])}
        if key == best:
            row["sst2_dev_after_task_distillation"] = mean_spread(
                [d.dev_acc(folder(s, tagged(key, "_kd_stage1_hinton"))) for s in d.seeds])
        rows.append(row)
    baselines = {
        "start": {"key": "start", "method": "none (the start itself)", "start": f"teacher layers {d.init_layers}",
                  "tokens": 0, "steps": 0,
                  "stsb_spearman": mean_spread([d.sts(start)]),
                  "sst2_heldout_after_finetuning": mean_spread([d.heldout_acc(folder(s, "gold_pretrained_layers"))
                                                           for s in d.seeds]),
                  "sst2_dev_after_finetuning": mean_spread([d.dev_acc(folder(s, "gold_pretrained_layers"))
                                                       for s in d.seeds]),
                  "sst2_dev_after_task_distillation": mean_spread([d.dev_acc(folder(s, "start_kd_stage1_hinton"))
                                                              for s in d.seeds])},
        "random": {"key": "random", "method": "none (random init)", "start": "random init", "tokens": 0, "steps": 0,
                   "stsb_spearman": mean_spread([d.sts(os.path.join(d.out, f"student_random_init_seed{s}"))
                                            for s in d.seeds]),
                   "sst2_heldout_after_finetuning": mean_spread([d.heldout_acc(folder(s, "gold_random"))
                                                            for s in d.seeds]),
                   "sst2_dev_after_finetuning": mean_spread([d.dev_acc(folder(s, "gold_random")) for s in d.seeds])},
        "task_only": {"key": "task_only", "method": "none; task distillation from the fine-tuned teacher's layers "
                      "(the demo's distilled student)", "start": f"fine-tuned teacher layers {d.init_layers}",
                      "tokens": 0, "steps": 0,
                      "sst2_dev_after_task_distillation": mean_spread([d.dev_acc(folder(s, "kd_stage1_hinton"))
                                                                  for s in d.seeds])},
        "teacher": {"key": "teacher", "method": "the teacher (6 x 384)", "start": "-", "tokens": 0, "steps": 0,
                    "stsb_spearman": mean_spread([d.sts(d.teacher)]),
                    "sst2_heldout_after_finetuning": mean_spread([d.heldout_acc(os.path.join(d.out, "sst2_teacher"))]),
                    "sst2_dev_after_finetuning": mean_spread([d.dev_acc(os.path.join(d.out, "sst2_teacher"))])},
    }
    rows = [baselines["teacher"], baselines["start"], baselines["random"], *rows, baselines["task_only"]]
    by_key = {r["key"]: r for r in rows}
    general_keys = [k for k, *_ in GENERAL_METHODS]
    # The first target asks for one method that does both: STS-B zero-shot >= 84.0 and +0.5 SST-2 over the start.
    # Among the methods that reach 84.0 (all of them if none does), the one with the largest SST-2 gain is named.
    gain = {k: by_key[k]["sst2_dev_after_finetuning"]["mean"] - by_key["start"]["sst2_dev_after_finetuning"]["mean"]
            for k in general_keys}
    reaching = [k for k in general_keys if by_key[k]["stsb_spearman"]["mean"] >= STS_TARGET] or general_keys
    named = max(reaching, key=gain.get)
    targets = {
        "sts_method": named, "sts": by_key[named]["stsb_spearman"]["mean"],
        "sts_method_sst2_gain_over_start": gain[named],
        "pipeline_method": best,
        "pipeline_minus_task_only": by_key[best]["sst2_dev_after_task_distillation"]["mean"]
        - by_key["task_only"]["sst2_dev_after_task_distillation"]["mean"],
    }
    meta = {"finished": time.strftime("%Y-%m-%d %H:%M"), "seeds": d.seeds, "tokens_budget": tokens,
            "batch_size": batch_size, "seq_len": seq_len, "learning_rate": lr, "warmup_proportion": warmup,
            "mean_tokens_per_corpus_line": line_tokens, "corpus": d.corpus_files,
            "pipeline_chosen_by": "best mean SST-2 held-out accuracy after fine-tuning (b)", "targets": targets}
    results = {"meta": meta, "rows": rows}
    atomic_write_json(results, os.path.join(d.out, f"general_results{budget_tag}.json"))
    md = general_markdown(rows, meta)
    atomic_write_text(md, os.path.join(d.out, f"general_results{budget_tag}.md"))
    first = d.seeds[0]
    plot_loss_curves({key: os.path.join(folder(first, tagged(key)), "train_log.jsonl")
                      for key, *_ in GENERAL_METHODS}, os.path.join(d.out, f"general_loss_curves{budget_tag}.png"))
    plot_score_bars(rows, os.path.join(d.out, f"general_scores{budget_tag}.png"))
    print(md)
    return results


def general_markdown(rows: list[dict], meta: dict) -> str:
    seeds = meta["seeds"]
    spread = "" if len(seeds) == 1 else f"; mean ± sample std (min-max) over seeds {', '.join(map(str, seeds))}"
    lines = [f"General-distillation comparison, {meta['finished']}: {meta['tokens_budget']:,} real tokens a method "
             f"(batch {meta['batch_size']}, lr {meta['learning_rate']:g}){spread}.", "",
             "| method | start | steps | tokens | wall time (s) | STS-B dev zero-shot | SST-2 held-out, fine-tuned (b) "
             "| SST-2 dev, fine-tuned (b) | SST-2 dev, task-distilled (c) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        wall = r.get("wall_seconds")
        wall = f"{wall:.0f}" if wall and math.isfinite(wall) else "-"
        tokens = f"{r['tokens']:,}" if r["tokens"] else "-"
        lines.append(f"| {r['method']} | {r['start']} | {r['steps'] or '-'} | {tokens} | {wall} | "
                     f"{format_stat(r.get('stsb_spearman'))} | "
                     f"{format_stat(r.get('sst2_heldout_after_finetuning'), 100)} | "
                     f"{format_stat(r.get('sst2_dev_after_finetuning'), 100)} | "
                     f"{format_stat(r.get('sst2_dev_after_task_distillation'), 100)} |")
    t = meta["targets"]
    lines += ["", f"Targets (means): {t['sts_method']}: STS-B zero-shot {t['sts']:.2f} (>= {STS_TARGET:g}) and "
              f"SST-2 dev gain over the start after fine-tuning {100 * t['sts_method_sst2_gain_over_start']:+.2f} "
              f"(>= +0.5); general + task distillation ({t['pipeline_method']}) - task distillation only = "
              f"{100 * t['pipeline_minus_task_only']:+.2f} (>= +0.3)."]
    return "\n".join(lines) + "\n"


def plot_score_bars(rows: list[dict], out_png: str) -> None:
    """Three panels (STS-B zero-shot, SST-2 dev fine-tuned, SST-2 dev task-distilled): one bar a row, the seed
    spread as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("stsb_spearman", "STS-B dev zero-shot Spearman", 1.0),
              ("sst2_dev_after_finetuning", "SST-2 dev, fine-tuned (b)", 100.0),
              ("sst2_dev_after_task_distillation", "SST-2 dev, task-distilled (c)", 100.0))
    fig, axes = plt.subplots(1, len(panels), figsize=(16, 0.45 * len(rows) + 1.5), sharey=True)
    names = [r["key"] for r in rows]
    for ax, (metric, title, scale) in zip(axes, panels):
        means = [scale * r[metric]["mean"] if r.get(metric) else 0.0 for r in rows]
        errs = [scale * r[metric]["std"] if r.get(metric) else 0.0 for r in rows]
        ax.barh(range(len(rows)), means, xerr=errs, color="tab:blue", alpha=0.8)
        shown = [m for m in means if m]
        if shown:
            ax.set_xlim(min(shown) - 3, max(shown) + 1.5)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(rows)), names, fontsize=8)
    axes[0].invert_yaxis()
    save_figure(fig, out_png)


def corpus_files(data_dir: str) -> list[str]:
    return sorted(glob.glob(os.path.join(data_dir, "corpus", "*.txt")))
