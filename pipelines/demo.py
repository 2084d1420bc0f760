"""End-to-end demo: does distillation give a small model that keeps the teacher's quality, and how fast?

Each stage runs the toolkit's own command-line scripts (so the demo exercises exactly what users run):

  1. pregenerate_training_data.py  corpus -> epoch_0.json with the teacher's vocabulary
  2. general_distill.py            MiniLMv2 relation distillation: teacher -> small student
  3. run_glue.py                   teacher fine-tuned on SST-2
  4. run_glue.py                   distilled student fine-tuned on SST-2
  5. run_glue.py                   the same student from random initialisation, same recipe (the baseline)
  6. parameters, CPU/GPU inference speed at seq 128, SST-2 dev accuracy -> results.json, results.md,
     loss_curves.png

A stage whose output is complete is skipped, so an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from kdcore.cli import UserError, ensure_writable_dir
from kdcore.modeling import atomic_write_json

logger = logging.getLogger("kd.demo")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class DemoScale:
    """The knobs that set how long the demo runs."""

    corpus_documents: int | None  # None: every document of every corpus file
    max_seq_len: int
    distill_steps: int
    distill_batch_size: int
    glue_max_train_examples: int | None
    glue_max_eval_examples: int | None
    teacher_epochs: float
    student_epochs: float
    glue_max_seq_length: int
    speed_batches: int


SCALES = {
    # CI: a couple of minutes, numbers meaningless, every stage exercised.
    "smoke": DemoScale(40, 64, 6, 8, 64, 64, 1, 1, 32, 1),
    # default: about 30 minutes on a 2-core CPU (distillation at sequence length 64 to fit that budget).
    "default": DemoScale(None, 64, 400, 32, None, None, 1, 2, 64, 3),
    # longer: a better student, for a GPU or a patient CPU.
    "long": DemoScale(None, 128, 4000, 64, None, None, 2, 4, 64, 5),
}


def _run(stage: str, script: str, args: list[str], log_dir: str) -> None:
    cmd = [sys.executable, os.path.join(REPO, script), *map(str, args)]
    log_path = os.path.join(log_dir, f"{stage}.log")
    logger.info("[%s] %s", stage, " ".join(cmd[1:]))
    t = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise UserError(f"demo stage {stage!r} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    logger.info("[%s] done in %.0f s", stage, time.time() - t)


def _done(folder: str, marker: str) -> bool:
    return os.path.isfile(os.path.join(folder, marker))


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def inference_speeds(model_dirs: dict[str, str], seq_len: int, batch_size: int, rounds: int,
                     device: torch.device) -> dict[str, float]:
    """Sentences per second of each encoder on full-length (`seq_len`) inputs.

    The models are timed in interleaved rounds (a, b, c, a, b, c, ...) and each takes its median round, so a slow
    moment of a shared machine hits all of them alike and the speed-ups stay fair.
    """
    from transformers import AutoModel

    models = {name: AutoModel.from_pretrained(path).to(device).eval() for name, path in model_dirs.items()}
    vocab = min(m.config.vocab_size for m in models.values())
    ids = torch.randint(1000, vocab, (batch_size, seq_len), device=device)
    mask = torch.ones_like(ids)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(input_ids=ids, attention_mask=mask)  # warm-up
        for _ in range(rounds):
            for name, model in models.items():
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                model(input_ids=ids, attention_mask=mask)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t)
    return {name: batch_size / sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def count_parameters(model_dir: str) -> int:
    from transformers import AutoModel

    return sum(p.numel() for p in AutoModel.from_pretrained(model_dir).parameters())


def plot_loss_curves(logs: dict[str, str], out_png: str) -> None:
    """One panel per stage: every loss term of its train_log.jsonl against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(logs), figsize=(5 * len(logs), 3.6))
    for ax, (title, path) in zip(axes, logs.items()):
        records = [json.loads(line) for line in open(path) if line.strip()] if os.path.isfile(path) else []
        records = [r for r in records if "lr" in r]  # training records, not evaluation ones
        skip = {"step", "epoch", "lr", "tokens_per_s", "grad_norm"}
        keys = sorted({k for r in records for k in r if k not in skip})
        for k in keys:
            pts = [(r["step"], r[k]) for r in records if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, linewidth=1.2,
                    marker="." if len(pts) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = out_png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out_png)


def results_markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Demo run {meta['finished']} on {meta['device']} ({meta['scale']} scale), teacher {meta['teacher_name']}.",
        "",
        "| model | parameters | inference (sentences/s, seq 128) | speed-up | SST-2 dev accuracy |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['sentences_per_s']:.1f} | "
                     f"{r['speedup']:.2f}x | {100 * r['sst2_dev_accuracy']:.2f} |")
    return "\n".join(lines) + "\n"


def run_demo(args) -> dict:
    scale = SCALES[args.scale]
    if args.distill_steps:
        scale.distill_steps = args.distill_steps
    out = ensure_writable_dir(args.output_dir)
    logs = ensure_writable_dir(os.path.join(out, "logs"), "--output_dir")
    data, teacher = args.data_dir, args.teacher_model
    sst2 = os.path.join(data, "glue", "SST-2")
    for path in [sst2, teacher] + [os.path.join(data, "corpus", c) for c in args.corpus]:
        if not os.path.exists(path):
            raise UserError(f"demo input not found: {path}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.time()

    # 1. pregenerate (one corpus file after the other, concatenated into one training file)
    pregen = os.path.join(out, "pregenerated")
    if not _done(pregen, "epoch_0_metrics.json"):
        corpus = os.path.join(out, "corpus.txt")
        with open(corpus + ".tmp", "w", encoding="utf-8") as f:
            for name in args.corpus:
                with open(os.path.join(data, "corpus", name), encoding="utf-8") as src:
                    f.write(src.read().rstrip("\n") + "\n\n")
        os.replace(corpus + ".tmp", corpus)
        extra = ["--max_documents", scale.corpus_documents] if scale.corpus_documents else []
        _run("1_pregenerate", "pregenerate_training_data.py",
             ["--train_corpus", corpus, "--bert_model", teacher, "--do_lower_case", "--output_dir", pregen,
              "--epochs_to_generate", 1, "--max_seq_len", scale.max_seq_len, "--num_workers", 2, *extra], logs)

    # 2. MiniLMv2 general distillation
    student = os.path.join(out, "student_minilmv2")
    if not _done(student, "model.safetensors"):
        _run("2_general_distill", "general_distill.py",
             ["--distill_method", "minilmv2", "--pregenerated_data", pregen, "--teacher_model", teacher,
              "--student_model", args.student_config, "--output_dir", student, "--train_batch_size",
              scale.distill_batch_size, "--max_steps", scale.distill_steps, "--learning_rate", args.distill_lr,
              "--num_warmup_steps", max(1, scale.distill_steps // 10), "--adam_epsilon", 1e-6,
              "--weight_decay", 0.01, "--num_relation_heads", args.num_relation_heads, "--logging_steps",
              max(1, scale.distill_steps // 100), "--num_train_epochs", 1000, *(["--bf16"] if args.bf16 else [])],
             logs)

    # 3-5. SST-2: teacher, distilled student, random-init student (same recipe for both students)
    glue_common = ["--task_name", "SST-2", "--data_dir", sst2, "--do_train", "--do_eval", "--do_lower_case",
                   "--max_seq_length", scale.glue_max_seq_length, "--per_gpu_train_batch_size", 32,
                   "--logging_steps", 10]
    if scale.glue_max_train_examples:
        glue_common += ["--max_train_examples", scale.glue_max_train_examples]
    if scale.glue_max_eval_examples:
        glue_common += ["--max_eval_examples", scale.glue_max_eval_examples]
    random_init = os.path.join(out, "student_random_init")
    if not _done(random_init, "model.safetensors"):
        # The baseline: the distilled student's architecture with fresh random weights.
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        from kdcore.modeling import save_model

        torch.manual_seed(args.seed)
        config = AutoConfig.from_pretrained(student)
        save_model(AutoModel.from_config(config), random_init, AutoTokenizer.from_pretrained(student))
    runs = {
        "teacher": (teacher, os.path.join(out, "sst2_teacher"), scale.teacher_epochs, args.teacher_lr),
        "student (MiniLMv2-distilled)": (student, os.path.join(out, "sst2_student_distilled"), scale.student_epochs,
                                         args.student_lr),
        "student (random init)": (random_init, os.path.join(out, "sst2_student_random"), scale.student_epochs,
                                  args.student_lr),
    }
    for i, (name, (init, folder, epochs, lr)) in enumerate(runs.items()):
        if not _done(folder, "eval_results.json"):
            _run(f"{3 + i}_sst2_{os.path.basename(folder)}", "run_glue.py",
                 ["--model_name_or_path", init, "--output_dir", folder, "--num_train_epochs", epochs,
                  "--learning_rate", lr, *glue_common], logs)

    # 6. the table
    speeds = inference_speeds({name: init for name, (init, _, _, _) in runs.items()}, 128, 16,
                              scale.speed_batches, device)
    rows = []
    for name, (init, folder, _, _) in runs.items():
        acc = _read_json(os.path.join(folder, "eval_results.json"))
        acc = acc.get("acc", acc.get("accuracy"))
        rows.append({"model": name, "parameters": count_parameters(init), "sentences_per_s": speeds[name],
                     "sst2_dev_accuracy": acc})
    for r in rows:
        r["speedup"] = r["sentences_per_s"] / rows[0]["sentences_per_s"]
    distill_log = [json.loads(line) for line in open(os.path.join(student, "train_log.jsonl")) if line.strip()]
    distill_log = [r for r in distill_log if "lr" in r]
    meta = {"finished": time.strftime("%Y-%m-%d %H:%M"), "device": torch.cuda.get_device_name(0)
            if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)", "scale": args.scale,
            "teacher_name": os.path.basename(os.path.dirname(teacher.rstrip("/"))) or teacher, "teacher_path": teacher,
            "student_config": args.student_config, "distill_steps": scale.distill_steps,
            "distill_first_log": distill_log[0] if distill_log else None,
            "distill_last_log": distill_log[-1] if distill_log else None,
            "wall_seconds": round(time.time() - t_start)}
    results = {"meta": meta, "rows": rows}
    atomic_write_json(results, os.path.join(out, "results.json"))
    md = results_markdown(rows, meta)
    with open(os.path.join(out, "results.md.tmp"), "w") as f:
        f.write(md)
    os.replace(os.path.join(out, "results.md.tmp"), os.path.join(out, "results.md"))
    plot_loss_curves({"MiniLMv2 general distillation": os.path.join(student, "train_log.jsonl"),
                      **{f"SST-2 {n}": os.path.join(f, "train_log.jsonl") for n, (_, f, _, _) in runs.items()}},
                     os.path.join(out, "loss_curves.png"))
    print(md)
    return results
