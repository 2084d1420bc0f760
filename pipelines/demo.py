"""End-to-end demo: does distillation give a small model that keeps the teacher's quality, against honest baselines?

Every stage runs the toolkit's own command-line scripts (so the demo exercises exactly what users run). With the
packaged teacher (all-MiniLM-L6-v2, 6 x 384) and a 3 x 384 student:

  1. run_glue.py            the teacher fine-tuned on SST-2, once (first seed): every seed's students are compared
                            with, and the distilled ones learn from, this same teacher

and for each seed (`--seeds N`: seeds 42, 43, ...):

  2. run_glue.py            the student initialised from the teacher's layers 2, 4, 6 (no distillation), fine-tuned
  3. run_glue.py            the same student from random initialisation, same recipe
  4. task_distill.py        the distilled student: initialised from the *fine-tuned* teacher's layers 2, 4, 6 and
                            classifier (--student_init teacher_layers), trained on the teacher's soft labels
                            (--pred_distill, logits cached once); same epochs, learning rate and batch as 2 and 3
  5. distill_embeddings.py  the sentence-embedding student: teacher-layer init + embedding distillation on the
                            Brown corpus sentences (no STS data), written as a sentence-transformers folder
  6. STS-B dev zero-shot Spearman of teacher, teacher-layer-init student and embedding student; parameters and
     inference speed; per-row mean and spread over seeds -> results.json, results.md, loss_curves.png

Model selection never looks at the dev set: every SST-2 row reports its last model.
A stage whose output is complete is skipped, so an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from kdcore.cli import UserError, ensure_writable_dir
from kdcore.modeling import atomic_write_json, atomic_write_text

logger = logging.getLogger("kd.demo")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class DemoScale:
    """The knobs that set how long the demo runs."""

    glue_max_train_examples: int | None
    glue_max_eval_examples: int | None
    teacher_epochs: float
    student_epochs: float
    glue_max_seq_length: int
    embed_steps: int
    embed_batch_size: int
    embed_max_seq_length: int
    sts_max_examples: int | None
    speed_batches: int


SCALES = {
    # CI: a couple of minutes, numbers meaningless, every stage exercised.
    "smoke": DemoScale(64, 64, 1, 1, 32, 4, 8, 32, 64, 1),
    # default: on a quiet 2-core CPU, the teacher once (11 min) + 22 min of students per seed.
    "default": DemoScale(None, None, 1, 2, 64, 100, 32, 64, None, 3),
    # longer: for a GPU or a patient CPU.
    "long": DemoScale(None, None, 2, 3, 64, 3000, 64, 64, None, 5),
}

def _run(stage: str, script: str, args: list[str], log_dir: str, times: dict | None = None) -> None:
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
    if times is not None:
        times[stage] = round(time.time() - t, 1)


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


def mean_spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max of one row's per-seed values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": list(values)}


def _fmt(stat: dict | None, scale: float = 1.0) -> str:
    if stat is None:
        return "-"
    if stat["n"] == 1:
        return f"{scale * stat['mean']:.2f}"
    return (f"{scale * stat['mean']:.2f} ± {scale * stat['std']:.2f} "
            f"({scale * stat['min']:.2f}-{scale * stat['max']:.2f})")


def results_markdown(rows: list[dict], meta: dict) -> str:
    n = meta["seeds"]
    spread = "" if len(n) == 1 else f"; mean ± sample std (min-max) over seeds {', '.join(map(str, n))}"
    lines = [
        f"Demo run {meta['finished']} on {meta['device']} ({meta['scale']} scale, wall time "
        f"{meta['wall_seconds'] / 60:.1f} min){spread}. Teacher {meta['teacher_name']}.",
        "",
        "| model | parameters | inference (sentences/s, seq 128) | speed-up | SST-2 dev accuracy | STS-B dev zero-shot Spearman |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['sentences_per_s']:.1f} | {r['speedup']:.2f}x" if r.get("sentences_per_s") else "- | -"
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {speed} | {_fmt(r.get('sst2_dev_accuracy'), 100)} | "
                     f"{_fmt(r.get('stsb_spearman'))} |")
    t = meta.get("targets")
    if t:
        lines += ["", f"Targets: distilled / teacher SST-2 = {100 * t['distilled_over_teacher']:.1f}% (>= 98%); "
                  f"distilled - teacher-layer-init = {100 * t['distilled_minus_teacher_layers']:+.2f} points (>= +0.5); "
                  f"embedding student / teacher STS-B = {100 * t['embedding_over_teacher_sts']:.1f}% (>= 95%)."]
    return "\n".join(lines) + "\n"


def write_init_students(teacher: str, student_config: str, out_dir: str, seed: int, init_layers: str) -> tuple[str, str]:
    """The two undistilled starts: `student_teacher_layers` (the teacher's embeddings and layers `init_layers`,
    a sentence-transformers folder like the teacher) and `student_random_init_seed<seed>`."""
    from transformers import AutoModel, AutoTokenizer

    from kdcore.modeling import build_student, load_teacher, load_tokenizer, save_model
    from kdcore.sentence_embeddings import write_sentence_transformers_files
    from kdcore.student_init import init_from_teacher_layers, parse_layer_list

    teacher_layers = os.path.join(out_dir, "student_teacher_layers")
    random_init = os.path.join(out_dir, f"student_random_init_seed{seed}")
    tokenizer = None
    if not _done(teacher_layers, "model.safetensors"):
        tokenizer = load_tokenizer(teacher, "--teacher_model")
        t = load_teacher(teacher)
        student = build_student(student_config, t.config, tokenizer)
        layers = parse_layer_list(init_layers, student.config.num_hidden_layers, t.config.num_hidden_layers,
                                  "--init_layers")
        init_from_teacher_layers(student, t, layers, teacher)
        save_model(student, teacher_layers, tokenizer)
        write_sentence_transformers_files(teacher, teacher_layers, student.config.hidden_size)
    if not _done(random_init, "model.safetensors"):
        # The baseline: the same architecture with fresh random weights.
        from kdcore.modeling import _read_config

        torch.manual_seed(seed)
        config = _read_config(teacher_layers, "--student_model")
        config.student_init = {"from": "random", "seed": seed}
        save_model(AutoModel.from_config(config), random_init, AutoTokenizer.from_pretrained(teacher_layers))
    return teacher_layers, random_init


def sts_spearman(model_dir: str, sts_file: str, max_examples: int | None) -> float:
    from kdcore.modeling import load_model, load_tokenizer
    from kdcore.sentence_embeddings import read_pooling, sts_zero_shot_spearman

    mode, normalize = read_pooling(model_dir)
    model = load_model(model_dir, argname="--model_dir").eval()
    return sts_zero_shot_spearman(model, load_tokenizer(model_dir, "--model_dir"), sts_file, mode, normalize,
                                  max_examples=max_examples)["spearman"]


def run_demo(args) -> dict:
    scale = SCALES[args.scale]
    if args.embed_steps:
        scale.embed_steps = args.embed_steps
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: need at least 1")
    out = ensure_writable_dir(args.output_dir)
    logs = ensure_writable_dir(os.path.join(out, "logs"), "--output_dir")
    data, teacher = args.data_dir, args.teacher_model
    sst2 = os.path.join(data, "glue", "SST-2")
    sts_file = os.path.join(data, "glue", "STS-B", "dev.tsv")
    corpus = [os.path.join(data, "corpus", c) for c in args.corpus]
    for path in [sst2, sts_file, teacher] + corpus:
        if not path or not os.path.exists(path):
            raise UserError(f"demo input not found: {path}")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.time()
    times_path = os.path.join(out, "stage_seconds.json")
    times = _read_json(times_path) if os.path.isfile(times_path) else {}

    glue_common = ["--task_name", "SST-2", "--data_dir", sst2, "--do_lower_case",
                   "--max_seq_length", scale.glue_max_seq_length, "--logging_steps", 10]
    if scale.glue_max_train_examples:
        glue_common += ["--max_train_examples", scale.glue_max_train_examples]
    if scale.glue_max_eval_examples:
        glue_common += ["--max_eval_examples", scale.glue_max_eval_examples]
    finetune = ["--do_train", "--do_eval", "--per_gpu_train_batch_size", 32, *glue_common]
    seeds = [args.seed + i for i in range(args.seeds)]
    per_seed = []
    for seed in seeds:
        sdir = os.path.join(out, f"seed{seed}")
        teacher_layers, random_init = write_init_students(teacher, args.student_config, out, seed, args.init_layers)
        f = {name: os.path.join(sdir, name) for name in ("sst2_teacher", "sst2_student_teacher_layers",
                                                         "sst2_student_random", "sst2_student_distilled",
                                                         "embedding_student")}

        def stage(name, script, argv, marker="eval_results.json"):
            if not _done(f[name], marker):
                _run(f"seed{seed}_{name}", script, [*argv, "--output_dir", f[name], "--seed", seed], logs, times)
                atomic_write_json(times, times_path)

        # One fine-tuned teacher (first seed) for all seeds: the seeds vary the students, not their reference.
        f["sst2_teacher"] = os.path.join(out, f"seed{seeds[0]}", "sst2_teacher")
        stage("sst2_teacher", "run_glue.py", ["--model_name_or_path", teacher, "--num_train_epochs",
                                              scale.teacher_epochs, "--learning_rate", args.teacher_lr, *finetune])
        for name, init in (("sst2_student_teacher_layers", teacher_layers), ("sst2_student_random", random_init)):
            stage(name, "run_glue.py", ["--model_name_or_path", init, "--num_train_epochs", scale.student_epochs,
                                        "--learning_rate", args.student_lr, *finetune])
        # Same epochs, learning rate, batch, warmup (none) and weight decay (none) as the fine-tuned students; the
        # model is evaluated once, at the end (--eval_step beyond the last step), as run_glue.py does.
        stage("sst2_student_distilled", "task_distill.py",
              ["--pred_distill", "--teacher_model", f["sst2_teacher"], "--student_model", args.student_config,
               "--student_init", "teacher_layers", "--init_layers", args.init_layers, "--train_batch_size", 32,
               "--num_train_epochs", scale.student_epochs, "--learning_rate", args.student_lr,
               "--warmup_proportion", 0, "--weight_decay", 0, "--eval_step", 10 ** 9, "--temperature",
               args.temperature, "--cache_dir", os.path.join(out, "teacher_logits"), *glue_common])
        stage("embedding_student", "distill_embeddings.py",
              ["--teacher_model", teacher, "--student_model", args.student_config, "--student_init", "teacher_layers",
               "--init_layers", args.init_layers, "--train_text", *corpus, "--max_steps", scale.embed_steps,
               "--train_batch_size", scale.embed_batch_size, "--max_seq_length", scale.embed_max_seq_length,
               "--learning_rate", args.embed_lr, "--relation_weight", args.relation_weight, "--logging_steps",
               max(1, scale.embed_steps // 50)])
        per_seed.append(f)

    # STS-B zero-shot: the pretrained teacher and the undistilled teacher-layer start are deterministic (one value);
    # the embedding students' values come from their own runs (eval_results.json).
    sts_cache = os.path.join(out, "sts_zero_shot.json")
    sts = _read_json(sts_cache) if os.path.isfile(sts_cache) else {}
    for name, path in (("teacher", teacher), ("teacher_layers", os.path.join(out, "student_teacher_layers"))):
        key = f"{name}:{scale.sts_max_examples}"
        if key not in sts:
            t = time.time()
            sts[key] = sts_spearman(path, sts_file, scale.sts_max_examples)
            times[f"sts_{name}"] = round(time.time() - t, 1)
            atomic_write_json(sts, sts_cache)
    atomic_write_json(times, times_path)

    def acc(folder):
        r = _read_json(os.path.join(folder, "eval_results.json"))
        return r.get("acc", r.get("accuracy"))

    def emb_sts(folder):  # the same evaluation as the teacher's and the teacher-layer start's, cached per folder
        weights = os.stat(os.path.join(folder, "model.safetensors"))  # a retrained folder is a new key
        key = f"{os.path.relpath(folder, out)}:{weights.st_mtime_ns}:{weights.st_size}:{scale.sts_max_examples}"
        if key not in sts:
            sts[key] = sts_spearman(folder, sts_file, scale.sts_max_examples)
            atomic_write_json(sts, sts_cache)
        return sts[key]

    first = per_seed[0]
    rows = [
        {"model": f"teacher (all-MiniLM-L6-v2, 6 x 384), fine-tuned once (seed {seeds[0]})", "init": teacher,
         "sst2_dev_accuracy": mean_spread([acc(first["sst2_teacher"])]),
         "stsb_spearman": mean_spread([sts[f"teacher:{scale.sts_max_examples}"]])},
        {"model": "student 3 x 384, distilled (fine-tuned teacher's layers + soft labels)",
         "init": first["sst2_student_distilled"],
         "sst2_dev_accuracy": mean_spread([acc(f["sst2_student_distilled"]) for f in per_seed])},
        {"model": "student 3 x 384, teacher-layer init, fine-tuned (no distillation)",
         "init": os.path.join(out, "student_teacher_layers"),
         "sst2_dev_accuracy": mean_spread([acc(f["sst2_student_teacher_layers"]) for f in per_seed]),
         "stsb_spearman": mean_spread([sts[f"teacher_layers:{scale.sts_max_examples}"]])},
        {"model": "student 3 x 384, random init, fine-tuned", "init": os.path.join(out, f"student_random_init_seed{seeds[0]}"),
         "sst2_dev_accuracy": mean_spread([acc(f["sst2_student_random"]) for f in per_seed])},
        {"model": "student 3 x 384, embedding-distilled (teacher-layer init)", "init": first["embedding_student"],
         "stsb_spearman": mean_spread([emb_sts(f["embedding_student"]) for f in per_seed])},
    ]
    speeds = inference_speeds({"teacher": teacher, "student": rows[1]["init"]}, 128, 16, scale.speed_batches, device)
    for r in rows:
        r["parameters"] = count_parameters(r["init"])
        r["sentences_per_s"] = speeds["teacher"] if r is rows[0] else speeds["student"]
        r["speedup"] = r["sentences_per_s"] / speeds["teacher"]
    teacher_acc, distilled_acc = rows[0]["sst2_dev_accuracy"]["mean"], rows[1]["sst2_dev_accuracy"]["mean"]
    targets = {"distilled_over_teacher": distilled_acc / teacher_acc,
               "distilled_minus_teacher_layers": distilled_acc - rows[2]["sst2_dev_accuracy"]["mean"],
               "embedding_over_teacher_sts": rows[4]["stsb_spearman"]["mean"] / rows[0]["stsb_spearman"]["mean"]}
    meta = {"finished": time.strftime("%Y-%m-%d %H:%M"), "device": torch.cuda.get_device_name(0)
            if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)", "scale": args.scale, "seeds": seeds,
            "teacher_name": "all-MiniLM-L6-v2" if "minilm_l6" in teacher.lower() else teacher, "teacher_path": teacher,
            "student_config": args.student_config, "init_layers": args.init_layers, "embed_steps": scale.embed_steps,
            "command": " ".join([os.path.basename(sys.argv[0]) or "demo.py", *sys.argv[1:]]),
            "wall_seconds": round(time.time() - t_start), "stage_seconds": times,
            "stage_seconds_total": round(sum(times.values())), "targets": targets}
    # The wall time of a demo that resumed is the time its stages took, not the last invocation's.
    meta["wall_seconds"] = max(meta["wall_seconds"], meta["stage_seconds_total"])
    results = {"meta": meta, "rows": rows}
    atomic_write_json(results, os.path.join(out, "results.json"))
    md = results_markdown(rows, meta)
    atomic_write_text(md, os.path.join(out, "results.md"))
    plot_loss_curves({"embedding distillation": os.path.join(first["embedding_student"], "train_log.jsonl"),
                      **{f"SST-2 {n[5:]}": os.path.join(first[n], "train_log.jsonl")
                         for n in ("sst2_teacher", "sst2_student_distilled", "sst2_student_teacher_layers",
                                   "sst2_student_random")}},
                     os.path.join(out, "loss_curves.png"))
    print(md)
    return results
