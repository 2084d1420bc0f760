"""Masked-LM training instances from a corpus (`pregenerate_training_data.py`; read back by kdcore/pregenerated_data.py).

Input: documents separated by blank lines. Either one sentence per line (the original's format), or raw text
(paragraph lines, or hard-wrapped lines) which is split into sentences with a small rule-based splitter.

Output, per epoch N (the original's format, read by `general_distill.py`):
  * `epoch_N.json`: one JSON object per line with `tokens`, `segment_ids`, `is_random_next`,
    `masked_lm_positions`, `masked_lm_labels`;
  * `epoch_N_metrics.json`: `{"num_training_examples": ..., "max_seq_len": ...}`.

Every document draws its randomness from its own generator seeded by (seed, epoch, document index), so the
output is the same whatever `--num_workers` is. Workers each write a part file; the parts are concatenated in
document order into a temporary file that is renamed to `epoch_N.json` at the end (atomic). With
`--reduce_memory` the tokenized documents live in a binary file in the output folder (read back by offset),
and only two small integers per document stay in memory.
"""
from __future__ import annotations

import glob
import json
import logging
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import tempfile
from typing import Iterable, Iterator

import numpy as np
from tqdm import tqdm

from kdcore.cli import UserError, ensure_writable_dir
from kdcore.files import atomic_write_json, iter_text_lines
from kdcore.shards import (PACKED_DIR, PACKED_MANIFEST, ShardWriter, epoch_shard_fields, token_dtype,
                           vocab_sha1)
from kdcore.modeling import check_length_fits, load_tokenizer

logger = logging.getLogger("kd.pregenerate")

# --------------------------------------------------------------------------------------------------------------
# Reading the corpus
# --------------------------------------------------------------------------------------------------------------
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "cf", "al", "no", "fig",
    "gen", "col", "lt", "sgt", "capt", "gov", "rev", "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr",
    "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "u.s", "u.k", "mt", "approx", "ca", "op",
}
# A sentence ends at . ! or ? (optionally followed by closing quotes/brackets), then whitespace, then something
# that can start a sentence.
_BOUNDARY = re.compile(r"""[.!?]["'\u201d\u2019)\]]*(\s+)(?=["'\u201c\u2018(\[]*[A-Z0-9])""")


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitter (no model download needed).

    Splits after `.`, `!` or `?` followed by whitespace and an upper-case letter or a digit, except after common
    abbreviations ("Dr.", "e.g.") and single-letter initials ("J. R. R. Tolkien").
    """
    text = " ".join(text.split())
    if not text:
        return []
    sentences, start = [], 0
    for m in _BOUNDARY.finditer(text):
        candidate = text[start : m.start(1)]
        last_word = candidate.rsplit(" ", 1)[-1].rstrip(".!?\"')]\u201d\u2019").lower()
        if candidate.endswith(".") and (last_word in _ABBREVIATIONS or (len(last_word) == 1 and last_word.isalpha())):
            continue
        if candidate:
            sentences.append(candidate)
        start = m.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def detect_corpus_format(path: str, sample_lines: int = 2000) -> str:
    """"sentences" when the non-blank lines look like single sentences, else "raw".

    A line of a one-sentence-per-line corpus holds one sentence and ends like one. Raw text has lines with several
    sentences (paragraph per line) or lines that stop mid-sentence (hard-wrapped books).
    """
    n = multi = unterminated = 0
    for _, line in iter_text_lines(path, "--train_corpus"):
        line = line.strip()
        if not line:
            continue
        n += 1
        if len(split_sentences(line)) > 1:
            multi += 1
        if not re.search(r"""[.!?]["'\u201d\u2019)\]]*$""", line):
            unterminated += 1
        if n >= sample_lines:
            break
    if n == 0:
        return "sentences"
    return "raw" if (multi + unterminated) / n > 0.3 else "sentences"


def iter_documents(path: str, corpus_format: str) -> Iterator[list[str]]:
    """Yield documents as lists of sentences. Documents are separated by blank lines.

    "sentences": every line is a sentence. "raw": the lines of a block are joined and split into sentences.
    """
    block: list[str] = []

    def flush():
        if corpus_format == "raw":
            return split_sentences(" ".join(block))
        return block

    for _, line in iter_text_lines(path, "--train_corpus"):
        line = line.strip()
        if line:
            block.append(line)
        elif block:
            doc = flush()
            block = []
            if doc:
                yield doc
    if block:
        doc = flush()
        if doc:
            yield doc


# --------------------------------------------------------------------------------------------------------------
# Tokenized document stores
# --------------------------------------------------------------------------------------------------------------
class DocumentStore:
    """Tokenized documents (each a list of int32 arrays, one per sentence), indexable, with sentence counts."""

    def __init__(self):
        self.num_sentences: list[int] = []
        self._cumsum = None

    def __len__(self) -> int:
        return len(self.num_sentences)

    def add(self, doc: list[np.ndarray]) -> None:
        raise NotImplementedError

    def __getitem__(self, idx: int) -> list[np.ndarray]:
        raise NotImplementedError

    def finalize(self) -> None:
        self._cumsum = np.cumsum(np.asarray(self.num_sentences, dtype=np.int64))

    def sample_other_doc(self, current_idx: int, rng: random.Random) -> list[np.ndarray]:
        """A document other than `current_idx`, each sentence of the corpus equally likely (as the original)."""
        cumsum = self._cumsum
        total = int(cumsum[-1])
        start = int(cumsum[current_idx])
        end = start + total - self.num_sentences[current_idx]
        sentence_index = rng.randrange(start, end) % total
        doc_idx = int(np.searchsorted(cumsum, sentence_index, side="right"))
        return self[doc_idx]


class MemoryDocumentStore(DocumentStore):
    def __init__(self):
        super().__init__()
        self.docs: list[list[np.ndarray]] = []

    def add(self, doc):
        self.docs.append(doc)
        self.num_sentences.append(len(doc))

    def __getitem__(self, idx):
        return self.docs[idx]


class DiskDocumentStore(DocumentStore):
    """Documents in one binary file: per document [n_sent][len_1..len_n][ids...] as int32, found by offset."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.offsets: list[int] = []
        self._writer = open(path, "wb")
        self._pos = 0
        self._reader = None
        self._reader_pid = None

    def add(self, doc):
        lengths = np.asarray([len(s) for s in doc], dtype=np.int32)
        blob = np.concatenate([np.asarray([len(doc)], dtype=np.int32), lengths] + [s.astype(np.int32) for s in doc]).tobytes()
        self.offsets.append(self._pos)
        self._writer.write(blob)
        self._pos += len(blob)
        self.num_sentences.append(len(doc))

    def finalize(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.offsets = np.asarray(self.offsets + [self._pos], dtype=np.int64)
        self.num_sentences = np.asarray(self.num_sentences, dtype=np.int32)
        super().finalize()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_writer"] = state["_reader"] = None
        return state

    def __getitem__(self, idx):
        if self._reader is None or self._reader_pid != os.getpid():  # one handle per process
            self._reader = open(self.path, "rb")
            self._reader_pid = os.getpid()
        start, end = int(self.offsets[idx]), int(self.offsets[idx + 1])
        data = np.frombuffer(os.pread(self._reader.fileno(), end - start, start), dtype=np.int32)
        n = int(data[0])
        lengths = data[1 : 1 + n]
        pos, doc = 1 + n, []
        for length in lengths:
            doc.append(data[pos : pos + length])
            pos += int(length)
        return doc

    def close(self):
        for handle in (self._writer, self._reader):
            if handle is not None:
                handle.close()
        self._writer = self._reader = None


def corpus_files(spec: str, argname: str = "--train_corpus") -> list[str]:
    """The input files of `spec`: a file, a folder (its regular files, sorted, hidden ones skipped) or a glob."""
    if os.path.isfile(spec):
        return [spec]
    if os.path.isdir(spec):
        files = sorted(os.path.join(spec, n) for n in os.listdir(spec)
                       if not n.startswith(".") and os.path.isfile(os.path.join(spec, n)))
        if not files:
            raise UserError(f"{argname} {spec}: the folder holds no files")
        return files
    files = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
    if not files:
        raise UserError(f"{argname}: no such file or folder, and no file matches the pattern: {spec}")
    return files


def iter_corpus_documents(paths: list[str], corpus_format: str) -> Iterator[list[str]]:
    """Documents of every file in turn (a file's end is a document break); `corpus_format` "auto" decides per file."""
    for path in paths:
        fmt = detect_corpus_format(path) if corpus_format == "auto" else corpus_format
        logger.info("corpus %s: %s", path,
                    "one sentence per line" if fmt == "sentences" else "raw text, splitting sentences")
        yield from iter_documents(path, fmt)


def tokenize_corpus(path: str | list[str], tokenizer, store: DocumentStore, corpus_format: str, batch_docs: int = 256,
                    max_documents: int | None = None, batch_chars: int = 1 << 20) -> DocumentStore:
    """Tokenize the documents of one file or of a list of files (`corpus_format` may be "auto") in batches with
    the fast tokenizer (which encodes a batch on all cores) and add them to `store` (streamed).

    A batch is flushed at `batch_docs` documents or `batch_chars` characters, whichever comes first: the
    tokenizer's Python output for a batch is the peak of memory, so it is bounded by text size, not doc count.
    """

    def flush(docs: list[list[str]]):
        flat = [s for d in docs for s in d]
        ids = tokenizer(flat, add_special_tokens=False, return_attention_mask=False,
                        return_token_type_ids=False)["input_ids"] if flat else []
        pos = 0
        for d in docs:
            sents = [np.asarray(x, dtype=np.int32) for x in ids[pos : pos + len(d)]]
            pos += len(d)
            sents = [s for s in sents if len(s)]
            if sents:
                store.add(sents)

    pending: list[list[str]] = []
    pending_chars = 0
    # The bar starts with the first document read, so a corpus that is unreadable from its first line fails with
    # its one error line and no empty bar before it.
    bar = None
    paths = [path] if isinstance(path, str) else path
    for n, doc in enumerate(iter_corpus_documents(paths, corpus_format)):
        if max_documents is not None and n >= max_documents:
            break
        if bar is None:
            bar = tqdm(desc="Tokenizing documents", unit=" docs")
        pending.append(doc)
        pending_chars += sum(len(sent) for sent in doc)
        if len(pending) >= batch_docs or pending_chars >= batch_chars:
            flush(pending)
            bar.update(len(pending))
            pending, pending_chars = [], 0
    if pending:
        flush(pending)
        bar.update(len(pending))
    if bar is not None:
        bar.close()
    store.finalize()
    return store


# --------------------------------------------------------------------------------------------------------------
# Instances (BERT's create_instances_from_document, per document, with its own RNG)
# --------------------------------------------------------------------------------------------------------------
class Vocab:
    """What instance creation needs from the tokenizer, as plain picklable data."""

    def __init__(self, tokenizer):
        self.id_to_token = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.cls, self.sep, self.mask = tokenizer.cls_token, tokenizer.sep_token, tokenizer.mask_token
        special = set(tokenizer.all_special_ids)
        self.replacement_ids = [i for i in range(len(tokenizer)) if i not in special]
        # WordPiece marks continuations with "##"; SentencePiece marks word starts with "\u2581".
        self.sentencepiece = any(t.startswith("\u2581") for t in self.id_to_token[:2000])
        self.token_to_id = {t: i for i, t in enumerate(self.id_to_token)}
        self.sha1 = vocab_sha1(self.id_to_token)

    def is_continuation(self, token: str) -> bool:
        if self.sentencepiece:
            return not token.startswith("\u2581")
        return token.startswith("##")


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_num_tokens: int, rng: random.Random) -> None:
    """Trim the longer of the two, from the front or the back at random, until they fit."""
    while len(tokens_a) + len(tokens_b) > max_num_tokens:
        trunc = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        if rng.random() < 0.5:
            del trunc[0]
        else:
            trunc.pop()


def create_masked_lm_predictions(tokens: list[str], masked_lm_prob: float, max_predictions_per_seq: int,
                                 whole_word_mask: bool, vocab: Vocab, rng: random.Random):
    """BERT's masking: choose ~prob*len positions (whole words if asked), 80% [MASK], 10% random, 10% kept.

    `masked_lm_prob` 0 (TinyBERT's default: a corpus without [MASK]) gives no masked positions at all.
    """
    if masked_lm_prob <= 0 or max_predictions_per_seq <= 0:
        return tokens, [], []
    cand_indices: list[list[int]] = []
    for i, token in enumerate(tokens):
        if token in (vocab.cls, vocab.sep):
            continue
        # a continuation piece joins the word right before it, never across [SEP] (front truncation can leave one)
        if whole_word_mask and cand_indices and cand_indices[-1][-1] == i - 1 and vocab.is_continuation(token):
            cand_indices[-1].append(i)
        else:
            cand_indices.append([i])
    num_to_mask = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    rng.shuffle(cand_indices)
    masked = []
    covered = set()
    for index_set in cand_indices:
        if len(masked) >= num_to_mask:
            break
        if len(masked) + len(index_set) > num_to_mask:
            continue
        if any(i in covered for i in index_set):
            continue
        for index in index_set:
            covered.add(index)
            if rng.random() < 0.8:
                masked_token = vocab.mask
            elif rng.random() < 0.5:
                masked_token = tokens[index]
            else:
                masked_token = vocab.id_to_token[rng.choice(vocab.replacement_ids)]
            masked.append((index, tokens[index]))
            tokens[index] = masked_token
    masked.sort()
    return tokens, [i for i, _ in masked], [label for _, label in masked]


def create_instances_from_document(store: DocumentStore, doc_idx: int, max_seq_length: int, short_seq_prob: float,
                                   masked_lm_prob: float, max_predictions_per_seq: int, whole_word_mask: bool,
                                   vocab: Vocab, rng: random.Random, bi_text: bool = True) -> list[dict]:
    """Sentence-pair instances from one document (BERT's algorithm, randomness from `rng`).

    With `bi_text=False` (`--one_seq`) segment B is always the actual continuation, never a random document.
    """
    document = store[doc_idx]
    max_num_tokens = max_seq_length - 3  # [CLS] A [SEP] B [SEP]
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk: list[np.ndarray] = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = rng.randrange(1, len(current_chunk)) if len(current_chunk) >= 2 else 1
                tokens_a = [int(t) for seg in current_chunk[:a_end] for t in seg]
                tokens_b: list[int] = []
                if bi_text and len(store) > 1 and (len(current_chunk) == 1 or rng.random() < 0.5):
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    random_document = store.sample_other_doc(doc_idx, rng)
                    random_start = rng.randrange(0, len(random_document))
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(int(t) for t in random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    i -= len(current_chunk) - a_end  # put the unused segments back
                else:
                    is_random_next = False
                    tokens_b = [int(t) for seg in current_chunk[a_end:] for t in seg]
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                words_a = [vocab.id_to_token[t] for t in tokens_a] or ["."]
                words_b = [vocab.id_to_token[t] for t in tokens_b] or ["."]
                tokens = [vocab.cls] + words_a + [vocab.sep] + words_b + [vocab.sep]
                segment_ids = [0] * (len(words_a) + 2) + [1] * (len(words_b) + 1)
                tokens, positions, labels = create_masked_lm_predictions(
                    tokens, masked_lm_prob, max_predictions_per_seq, whole_word_mask, vocab, rng)
                instances.append({
                    "tokens": tokens,
                    "segment_ids": segment_ids,
                    "is_random_next": is_random_next,
                    "masked_lm_positions": positions,
                    "masked_lm_labels": labels,
                })
            current_chunk = []
            current_length = 0
        i += 1
    return instances


# --------------------------------------------------------------------------------------------------------------
# Writing epochs, in parallel
# --------------------------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(store, vocab, options):
    _WORKER.update(store=store, vocab=vocab, options=options)


def _init_pool_worker(store, vocab, options):
    # Ctrl-C reaches the whole process group: the parent reports it in one line, workers stay quiet.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _init_worker(store, vocab, options)


def _instances(doc_range, epoch: int):
    store, vocab, o = _WORKER["store"], _WORKER["vocab"], _WORKER["options"]
    for doc_idx in doc_range:
        rng = random.Random(f"{o['seed']}-{epoch}-{doc_idx}")
        yield from create_instances_from_document(
            store, doc_idx, o["max_seq_len"], o["short_seq_prob"], o["masked_lm_prob"],
            o["max_predictions_per_seq"], o["do_whole_word_mask"], vocab, rng, bi_text=not o["one_seq"],
        )


def _generate_chunk(task: tuple[int, int, int, str]) -> tuple[int, object, int]:
    """Write the instances of documents [start, end) for `epoch`: a JSON part file (json format; returns its path)
    or one binary shard in epoch_N/ (shards format; returns its manifest entry). Returns (epoch, part, count)."""
    epoch, start, end, out_dir = task
    vocab, o = _WORKER["vocab"], _WORKER["options"]
    count = 0
    if o["output_format"] == "shards":
        ragged, scalars = epoch_shard_fields(len(vocab.id_to_token))
        writer = ShardWriter(os.path.join(out_dir, f"epoch_{epoch}", f"shard_{start:09d}"), ragged, scalars)
        to_id = vocab.token_to_id
        for inst in _instances(range(start, end), epoch):
            writer.add(input_ids=[to_id[t] for t in inst["tokens"]],
                       masked_lm_positions=inst["masked_lm_positions"],
                       masked_lm_labels=[to_id[t] for t in inst["masked_lm_labels"]],
                       segment_b_start=inst["segment_ids"].index(1), is_random_next=inst["is_random_next"])
            count += 1
        return epoch, writer.close(), count
    fd, part_path = tempfile.mkstemp(prefix=f".epoch_{epoch}.part-{start:09d}-", dir=out_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        for inst in _instances(range(start, end), epoch):
            out.write(json.dumps(inst, ensure_ascii=False) + "\n")
            count += 1
    return epoch, part_path, count


def write_epochs(store: DocumentStore, vocab: Vocab, output_dir: str, epochs: int, options: dict,
                 num_workers: int = 1, chunk_docs: int | None = None) -> list[int]:
    """Write epoch N in [0, epochs) and its epoch_N_metrics.json; returns the instance counts.

    options["output_format"] "shards" (default): binary shards in epoch_N/, one per chunk of documents, written by
    the workers themselves, listed in epoch_N_metrics.json (saved last: a folder without it is incomplete).
    "json": epoch_N.json, TinyBERT's original format (parts concatenated in document order).
    """
    options = {"output_format": "json", **options}
    if options["output_format"] == "shards":
        return _write_shard_epochs(store, vocab, output_dir, epochs, options, num_workers, chunk_docs)
    tasks = _chunk_tasks(len(store), epochs, output_dir, num_workers, chunk_docs)
    finals, handles, counts = {}, {}, [0] * epochs
    for e in range(epochs):
        fd, tmp = tempfile.mkstemp(prefix=f".epoch_{e}.json.tmp-", dir=output_dir)
        finals[e] = tmp
        handles[e] = os.fdopen(fd, "wb")
    try:
        for epoch, part, count in _run_tasks(tasks, store, vocab, options, num_workers, "Writing epochs"):
            with open(part, "rb") as src:
                shutil.copyfileobj(src, handles[epoch])
            os.remove(part)
            counts[epoch] += count
        umask = os.umask(0)
        os.umask(umask)
        for e in range(epochs):
            handles[e].close()
            os.chmod(finals[e], 0o666 & ~umask)  # mkstemp creates 0600; give the usual permissions
            os.replace(finals[e], os.path.join(output_dir, f"epoch_{e}.json"))
            shutil.rmtree(os.path.join(output_dir, f"epoch_{e}"), ignore_errors=True)  # a previous run's shards
            atomic_write_json({"num_training_examples": counts[e], "max_seq_len": options["max_seq_len"]},
                              os.path.join(output_dir, f"epoch_{e}_metrics.json"))
    finally:
        for e in range(epochs):
            if not handles[e].closed:
                handles[e].close()
            if os.path.exists(finals[e]):
                os.remove(finals[e])
        for name in os.listdir(output_dir):  # parts of an interrupted run
            if name.startswith(".epoch_") and ".part-" in name:
                os.remove(os.path.join(output_dir, name))
    return counts


_OWN_FILE = re.compile(r"epoch_(\d+)(?:_metrics)?\.json")
_OWN_SHARD_DIR = re.compile(r"epoch_(\d+)")
_OWN_TEMP = re.compile(r"\.(?:epoch_\d+\.(?:json\.tmp-|part-)|documents\.).*")


def claim_output_dir(output_dir: str, epochs: int, output_format: str) -> None:
    """After a run: it owns its output folder. Temporary files of a killed run are swept, and epoch files this run
    did not write (epoch_N.json / epoch_N/ shards with N >= `epochs`, left by an older, longer run; shard folders
    beside a json run) are removed, so that general distillation never mixes them in. Other files are left alone."""
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        shard_dir = _OWN_SHARD_DIR.fullmatch(name)
        if shard_dir and os.path.isdir(path):
            if int(shard_dir.group(1)) >= epochs or output_format == "json":
                logger.warning("removing %s (not part of this run's %d epoch(s))", path, epochs)
                shutil.rmtree(path)
            continue
        own = _OWN_FILE.fullmatch(name)
        if (own and int(own.group(1)) >= epochs) or _OWN_TEMP.fullmatch(name):
            logger.warning("removing %s (%s)", path, "left by an interrupted run" if name.startswith(".")
                           else f"not part of this run's {epochs} epoch(s)")
            os.remove(path)


def _chunk_tasks(n_docs: int, epochs: int, out_dir: str, num_workers: int, chunk_docs: int | None):
    if chunk_docs is None:
        chunk_docs = max(1, min(2000, -(-n_docs // max(1, num_workers * 4))))
    return [(e, s, min(n_docs, s + chunk_docs), out_dir) for e in range(epochs) for s in range(0, n_docs, chunk_docs)]


def _run_tasks(tasks, store, vocab, options, num_workers: int, desc: str):
    """Yield _generate_chunk(task) for every task, in order, over `num_workers` processes."""
    if num_workers > 1:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the parent is done tokenizing
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        pool = ctx.Pool(num_workers, initializer=_init_pool_worker, initargs=(store, vocab, options))
        results: Iterable = pool.imap(_generate_chunk, tasks)  # ordered: shards/parts stay in document order
    else:
        pool = None
        _init_worker(store, vocab, options)
        results = map(_generate_chunk, tasks)
    try:
        yield from tqdm(results, total=len(tasks), desc=desc, unit=" chunks")
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


def _write_shard_epochs(store, vocab: Vocab, output_dir: str, epochs: int, options: dict, num_workers: int,
                        chunk_docs: int | None) -> list[int]:
    for e in range(epochs):  # a previous run's shards (and manifest) go first: nothing stale is ever listed
        for stale in (os.path.join(output_dir, f"epoch_{e}_metrics.json"), os.path.join(output_dir, f"epoch_{e}.json")):
            if os.path.exists(stale):
                os.remove(stale)
        shutil.rmtree(os.path.join(output_dir, f"epoch_{e}"), ignore_errors=True)
        os.makedirs(os.path.join(output_dir, f"epoch_{e}"))
    tasks = _chunk_tasks(len(store), epochs, output_dir, num_workers, chunk_docs)
    shards: list[list[dict]] = [[] for _ in range(epochs)]
    counts = [0] * epochs
    for epoch, shard, count in _run_tasks(tasks, store, vocab, options, num_workers, "Writing shards"):
        shards[epoch].append({"prefix": f"epoch_{epoch}/{shard['prefix']}", "rows": shard["rows"]})
        counts[epoch] += count
    ragged, scalars = epoch_shard_fields(len(vocab.id_to_token))
    for e in range(epochs):
        atomic_write_json({"num_training_examples": counts[e], "max_seq_len": options["max_seq_len"],
                           "format": "shards", "vocab_size": len(vocab.id_to_token), "vocab_sha1": vocab.sha1,
                           "fields": {k: str(np.dtype(v)) for k, v in {**ragged, **scalars}.items()},
                           "shards": shards[e]}, os.path.join(output_dir, f"epoch_{e}_metrics.json"))
    return counts


def pregenerate(args, tokenizer) -> list[int]:
    """Run the whole pregeneration for parsed `args` (see pregenerate_training_data.py)."""
    if args.max_seq_len < 5:
        raise UserError(f"--max_seq_len {args.max_seq_len} is too small")
    if not 0 <= args.masked_lm_prob < 1:
        raise UserError(f"--masked_lm_prob must be in [0, 1), got {args.masked_lm_prob}")
    if args.num_workers < 1:
        raise UserError(f"--num_workers must be at least 1, got {args.num_workers}")
    if args.epochs_to_generate < 1:
        raise UserError(f"--epochs_to_generate must be at least 1, got {args.epochs_to_generate}")
    output_format = getattr(args, "output_format", "shards")
    if output_format not in ("shards", "json"):
        raise UserError(f"--output_format must be shards or json, got {output_format!r}")
    paths = corpus_files(args.train_corpus)
    store_file = None
    if args.reduce_memory:
        fd, store_file = tempfile.mkstemp(prefix=".documents.", suffix=".bin", dir=args.output_dir)
        os.close(fd)
        store = DiskDocumentStore(store_file)
    else:
        store = MemoryDocumentStore()
    try:
        tokenize_corpus(paths, tokenizer, store, args.corpus_format, max_documents=args.max_documents)
        if len(store) == 0:
            raise UserError(f"--train_corpus {args.train_corpus}: no text found")
        if len(store) <= 1 and not args.one_seq:
            raise UserError(
                f"--train_corpus {args.train_corpus}: no document breaks found. Random next sentences must come "
                "from another document: put a blank line between documents (or at any natural boundary such as "
                "chapters or paragraphs), or use --one_seq"
            )
        logger.info("%d documents, %d sentences", len(store), int(np.sum(store.num_sentences)))
        options = {k: getattr(args, k) for k in ("seed", "max_seq_len", "short_seq_prob", "masked_lm_prob",
                                                 "max_predictions_per_seq", "do_whole_word_mask", "one_seq")}
        options["output_format"] = output_format
        counts = write_epochs(store, Vocab(tokenizer), args.output_dir, args.epochs_to_generate, options,
                              num_workers=args.num_workers)
    finally:
        if isinstance(store, DiskDocumentStore):
            store.close()
        if store_file and os.path.exists(store_file):
            os.remove(store_file)
    claim_output_dir(args.output_dir, args.epochs_to_generate, output_format)
    return counts


# --------------------------------------------------------------------------------------------------------------
# Packed sequences (minilm / minilmv2): running text cut into fixed blocks, no epochs
# --------------------------------------------------------------------------------------------------------------
class PackingStore(DocumentStore):
    """A DocumentStore that keeps nothing: documents stream through into blocks [CLS] t_1 .. t_{T-2} [SEP] of one
    running token sequence (documents joined by [SEP]), written to shards of `blocks_per_shard` blocks."""

    def __init__(self, folder: str, max_seq_len: int, cls_id: int, sep_id: int, vocab_size: int,
                 blocks_per_shard: int):
        super().__init__()
        self.folder, self.body = folder, max_seq_len - 2
        self.cls, self.sep, self.dtype = cls_id, sep_id, token_dtype(vocab_size)
        self.blocks_per_shard = blocks_per_shard
        self.shards: list[dict] = []
        self.num_blocks = 0
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._writer = None

    def add(self, doc):
        self._pending.extend(doc)
        self._pending.append(np.asarray([self.sep], dtype=np.int32))
        self._pending_len += sum(len(s) for s in doc) + 1
        self.num_sentences.append(len(doc))
        if self._pending_len >= self.body:
            run = np.concatenate(self._pending)
            cut = len(run) - len(run) % self.body
            for start in range(0, cut, self.body):
                self._emit(run[start:start + self.body])
            self._pending, self._pending_len = [run[cut:]], len(run) - cut

    def _emit(self, body: np.ndarray) -> None:
        if self._writer is None:
            prefix = os.path.join(self.folder, f"shard_{len(self.shards):06d}")
            self._writer = ShardWriter(prefix, {"input_ids": self.dtype})
        self._writer.add(input_ids=np.concatenate([[self.cls], body, [self.sep]]))
        self.num_blocks += 1
        if self._writer.rows >= self.blocks_per_shard:
            self._close_shard()

    def _close_shard(self):
        info = self._writer.close()
        self.shards.append({"prefix": f"{PACKED_DIR}/{info['prefix']}", "rows": info["rows"]})
        self._writer = None

    def finalize(self):
        tail = np.concatenate(self._pending) if self._pending else np.zeros(0, dtype=np.int32)
        if len(tail) > 1:  # the last, shorter block (more than a lone [SEP])
            self._emit(tail)
        self._pending, self._pending_len = [], 0
        if self._writer is not None:
            self._close_shard()


def pregenerate_packed(args, tokenizer, tokens_per_shard: int = 1 << 22) -> int:
    """Tokenise the corpus once into fixed blocks of args.max_seq_len tokens (see PackingStore); returns the
    number of blocks. Output: packed/shard_*.npy and packed_metrics.json (saved last)."""
    if args.max_seq_len < 3:
        raise UserError(f"--max_seq_len {args.max_seq_len} is too small")
    paths = corpus_files(args.train_corpus)
    manifest = os.path.join(args.output_dir, PACKED_MANIFEST)
    folder = os.path.join(args.output_dir, PACKED_DIR)
    if os.path.exists(manifest):
        os.remove(manifest)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    vocab = Vocab(tokenizer)
    store = PackingStore(folder, args.max_seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id,
                         len(vocab.id_to_token), blocks_per_shard=max(1, tokens_per_shard // args.max_seq_len))
    tokenize_corpus(paths, tokenizer, store, args.corpus_format, max_documents=args.max_documents)
    if store.num_blocks == 0:
        raise UserError(f"--train_corpus {args.train_corpus}: no text found")
    atomic_write_json({"format": "packed", "num_blocks": store.num_blocks, "max_seq_len": args.max_seq_len,
                       "vocab_size": len(vocab.id_to_token), "vocab_sha1": vocab.sha1,
                       "fields": {"input_ids": str(store.dtype)}, "shards": store.shards}, manifest)
    return store.num_blocks


def run(args) -> list[int] | int:
    """pregenerate_training_data.py: check the arguments and the tokenizer, then pregenerate; returns the
    example count of each epoch (or, with --packed_sequences, the number of blocks)."""
    corpus_files(args.train_corpus)  # a clear error before any work
    if args.max_documents is not None and args.max_documents < 1:
        raise UserError("--max_documents must be at least 1")
    check_length_fits(args.bert_model, args.max_seq_len, "--max_seq_len", "--bert_model")
    tokenizer = load_tokenizer(args.bert_model, "--bert_model", do_lower_case=True if args.do_lower_case else None)
    if tokenizer.mask_token is None or tokenizer.cls_token is None or tokenizer.sep_token is None:
        raise UserError(f"--bert_model {args.bert_model}: the tokenizer has no [CLS]/[SEP]/[MASK] tokens")
    if len(tokenizer) <= len(tokenizer.all_special_tokens):
        raise UserError(f"--bert_model {args.bert_model}: the tokenizer has no vocabulary ({len(tokenizer)} tokens)")
    if getattr(args, "packed_sequences", False) and getattr(args, "output_format", "shards") != "shards":
        raise UserError(f"--output_format {args.output_format}: --packed_sequences are written as binary shards only")
    ensure_writable_dir(args.output_dir)
    if getattr(args, "packed_sequences", False):
        blocks = pregenerate_packed(args, tokenizer)
        print(f"{blocks} blocks of {args.max_seq_len} tokens -> {os.path.join(args.output_dir, PACKED_DIR)}")
        return blocks
    counts = pregenerate(args, tokenizer)
    for epoch, count in enumerate(counts):
        where = f"epoch_{epoch}.json" if getattr(args, "output_format", "shards") == "json" else f"epoch_{epoch}/"
        print(f"epoch {epoch}: {count} examples -> {os.path.join(args.output_dir, where)}")
    return counts
