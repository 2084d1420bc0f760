"""Masked-LM / next-sentence training instances from a corpus (`pregenerate_training_data.py`), BERT's
create_instances_from_document per document; read back by kdcore/pregenerated_data.py.

The corpus is read into documents by tinybert/corpus.py; `--packed_sequences` (MiniLM's input) is written by
tinybert/packed_sequences.py instead. Output, per epoch N:
  * default: binary shards `epoch_N/shard_*` (token ids, masked positions and labels, kdcore/shards.py) and
    `epoch_N_metrics.json` listing them;
  * `--output_format json`: the original's `epoch_N.json` (one JSON object per line with `tokens`, `segment_ids`,
    `is_random_next`, `masked_lm_positions`, `masked_lm_labels`) and `epoch_N_metrics.json`
    (`{"num_training_examples": ..., "max_seq_len": ...}`), for the original scripts.

Every document draws its randomness from its own generator seeded by (seed, epoch, document index), so the
output is the same whatever `--num_workers` is. Workers each write a part; the parts are joined in document order
into a temporary name renamed into place at the end (atomic).
"""
from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import random
import re
import shutil
import signal
import tempfile
from typing import Iterable

import numpy as np
from tqdm import tqdm

from kdcore.cli import UserError, ensure_writable_dir
from kdcore.files import atomic_write_json
from kdcore.modeling import check_length_fits, load_tokenizer
from kdcore.shards import PACKED_DIR, ShardWriter, epoch_shard_fields, vocab_sha1
from tinybert.corpus import DiskDocumentStore, DocumentStore, MemoryDocumentStore, corpus_files, tokenize_corpus
from tinybert.packed_sequences import pregenerate_packed

logger = logging.getLogger("kd.pregenerate")


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
