"""Packed sequences for MiniLM v1/v2 (`pregenerate_training_data.py --packed_sequences`): the corpus's running
text cut into fixed blocks [CLS] t_1 .. t_{T-2} [SEP] (documents joined by [SEP]), no epochs, masks or sentence
pairs, written once as binary shards + packed_metrics.json (read back by kdcore/pregenerated_data.PackedBlocks).
"""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np

from kdcore.errors import UserError
from kdcore.files import atomic_write_json
from kdcore.shards import PACKED_DIR, PACKED_MANIFEST, ShardWriter, token_dtype, vocab_sha1
from tinybert.corpus import DocumentStore, corpus_files, tokenize_corpus

logger = logging.getLogger("kd.pregenerate")


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
    id_to_token = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    store = PackingStore(folder, args.max_seq_len, tokenizer.cls_token_id, tokenizer.sep_token_id,
                         len(id_to_token), blocks_per_shard=max(1, tokens_per_shard // args.max_seq_len))
    tokenize_corpus(paths, tokenizer, store, args.corpus_format, max_documents=args.max_documents)
    if store.num_blocks == 0:
        raise UserError(f"--train_corpus {args.train_corpus}: no text found")
    atomic_write_json({"format": "packed", "num_blocks": store.num_blocks, "max_seq_len": args.max_seq_len,
                       "vocab_size": len(id_to_token), "vocab_sha1": vocab_sha1(id_to_token),
                       "fields": {"input_ids": str(store.dtype)}, "shards": store.shards}, manifest)
    return store.num_blocks
