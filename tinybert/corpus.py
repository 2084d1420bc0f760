"""A text corpus as documents of tokenized sentences (read by `pregenerate_training_data.py`).

Input: documents separated by blank lines. Either one sentence per line (the original's format), or raw text
(paragraph lines, or hard-wrapped lines) which is split into sentences with a small rule-based splitter
(`--corpus_format auto` decides from the first lines). Several files can be given (comma-separated). The
tokenized documents go to a DocumentStore: in memory, or (`--reduce_memory`) in a binary file in the output folder
read back by offset, with only two small integers per document in memory.
"""
from __future__ import annotations

import glob
import logging
import os
import random
import re
from typing import Iterator

import numpy as np
from tqdm import tqdm

from kdcore.errors import UserError
from kdcore.files import iter_text_lines

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
