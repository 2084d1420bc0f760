"""Reader of pregenerated general-distillation data (written by `pregenerate_training_data.py`).

Layout of `--pregenerated_data`, binary shards (the default output):

    epoch_0_metrics.json   {"num_training_examples": N, "max_seq_len": T, "format": "shards", "vocab_sha1": ...,
                            "shards": [{"prefix": "epoch_0/shard_000000000", "rows": n}, ...]}
    epoch_0/shard_*.npy    token ids (uint16/uint32), masked positions/labels, segment-B start, is_random_next
                           (kdcore.shards: memory-mapped, nothing parsed, every rank reads only its own rows)

or TinyBERT's JSON lines (`--output_format json`; still read):

    epoch_0.json           one JSON object per line:
                           {"tokens": [...], "segment_ids": [...], "is_random_next": bool,
                            "masked_lm_positions": [...], "masked_lm_labels": [...]}
    epoch_0_metrics.json   {"num_training_examples": N, "max_seq_len": T}
    epoch_1.json ...       (optional) further epochs, each masked/paired differently

or packed sequences for minilm/minilmv2 (`--packed_sequences`): packed_metrics.json + packed/shard_*.npy,
read by `PackedBlocks`.

As in TinyBERT's `general_distill.py`, training epoch e reads data epoch `e % num_data_epochs`, so fewer data
epochs than training epochs are reused in turn. Tokens are converted with the teacher's tokenizer; a token the
vocabulary lacks is an error (the data was pregenerated with another `--bert_model`).

`reduce_memory=True` keeps the arrays in memory-mapped files in a temporary folder (the original's approach), so
resident memory stays bounded by the page cache whatever the corpus size; the JSON file is read line by line.
"""
from __future__ import annotations

import bisect
import json
import logging
import os
import re
import tempfile

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from .batching import pad_batch
from .errors import UserError
from .files import iter_text_lines, read_json_file
from .shards import EPOCH_RAGGED, EPOCH_SCALARS, PACKED_MANIFEST, ShardedRows, vocab_sha1

logger = logging.getLogger("kd")

REQUIRED_KEYS = ("tokens", "segment_ids", "is_random_next", "masked_lm_positions", "masked_lm_labels")


def find_data_epochs(folder: str, argname: str = "--pregenerated_data") -> list[tuple[str, str]]:
    """The consecutive `epoch_{i}.json` / `epoch_{i}_metrics.json` pairs of `folder`, from epoch 0 on."""
    if not os.path.isdir(folder):
        raise UserError(f"{argname}: no such folder: {folder}")
    epochs = []
    while True:
        data = os.path.join(folder, f"epoch_{len(epochs)}.json")
        metrics = os.path.join(folder, f"epoch_{len(epochs)}_metrics.json")
        if not os.path.isfile(data) and os.path.isfile(metrics) and is_sharded(metrics):
            epochs.append((None, metrics))
            continue
        if not os.path.isfile(data):
            break
        if not os.path.isfile(metrics):
            raise UserError(f"{argname}: {data} has no {os.path.basename(metrics)} beside it")
        epochs.append((data, metrics))
    if not epochs:
        others = sorted(n for n in os.listdir(folder) if re.fullmatch(r"epoch_\d+\.json", n))
        hint = f" (found {', '.join(others[:3])}, but the epochs must start at epoch_0.json)" if others else ""
        if os.path.isfile(os.path.join(folder, PACKED_MANIFEST)):
            hint = " (it holds packed sequences, which only --distill_method minilm / minilmv2 read)"
        elif os.path.isdir(os.path.join(folder, "epoch_0")):
            hint = " (epoch_0/ has no epoch_0_metrics.json: the pregeneration did not finish)"
        raise UserError(f"{argname} {folder}: no epoch_0.json or epoch_0_metrics.json (pregenerate the data first){hint}")
    return epochs


def is_sharded(metrics_file: str) -> bool:
    """Whether an epoch_N_metrics.json describes binary shards (else the epoch is epoch_N.json)."""
    metrics = read_json_file(metrics_file, "--pregenerated_data", "metrics file")
    return isinstance(metrics, dict) and metrics.get("format") == "shards"


def check_vocabulary(manifest: dict, where: str, tokenizer) -> None:
    """Token ids are only meaningful with the vocabulary they were made with: compare its fingerprint."""
    ids = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    if manifest.get("vocab_sha1") != vocab_sha1(ids):
        raise UserError(f"{where}: the data was pregenerated with another vocabulary than the teacher's "
                        f"({manifest.get('vocab_size')} vs {len(ids)} tokens, or different tokens); pregenerate it "
                        "again with this teacher's tokenizer")


def read_metrics(metrics_file: str) -> tuple[int, int]:
    """(num_training_examples, max_seq_len) from an `epoch_N_metrics.json`."""
    try:
        with open(metrics_file, encoding="utf-8") as f:
            metrics = json.load(f)
        n, t = int(metrics["num_training_examples"]), int(metrics["max_seq_len"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as err:
        raise UserError(
            f"{metrics_file}: expected JSON with integer num_training_examples and max_seq_len ({type(err).__name__}: {err})"
        )
    if n <= 0 or t <= 1:
        raise UserError(f"{metrics_file}: num_training_examples {n} and max_seq_len {t} must be positive")
    return n, t


class PregeneratedEpoch(Dataset):
    """One data epoch (`epoch_N.json`) as a map-style Dataset.

    Item: {"input_ids", "attention_mask", "token_type_ids"} as unpadded int64 tensors of the example's own
    length (`PregeneratedCollator` pads a batch to its longest example), plus "is_random_next" (bool tensor)
    and, with `with_lm_labels`, "lm_label_ids" (-1 except at masked positions).
    """

    def __init__(self, data_file: str, metrics_file: str, tokenizer, reduce_memory: bool = False,
                 max_positions: int | None = None, with_lm_labels: bool = False):
        self.data_file = data_file
        self.num_examples, self.max_seq_len = read_metrics(metrics_file)
        if max_positions is not None and self.max_seq_len > max_positions:
            raise UserError(
                f"{metrics_file}: max_seq_len {self.max_seq_len} exceeds the teacher's {max_positions} positions"
            )
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.with_lm_labels = with_lm_labels
        self._tmp = None
        n, t = self.num_examples, self.max_seq_len
        specs = {"input_ids": ((n, t), np.int32), "segment_ids": ((n, t), np.int8), "lengths": ((n,), np.int32),
                 "is_random_next": ((n,), np.bool_)}
        if with_lm_labels:
            specs["lm_label_ids"] = ((n, t), np.int32)
        if reduce_memory:
            self._tmp = tempfile.TemporaryDirectory(prefix="kd_pregenerated_")
            self._files = {k: os.path.join(self._tmp.name, f"{k}.memmap") for k in specs}
            self._specs = specs
            arrays = {k: np.memmap(self._files[k], mode="w+", dtype=dt, shape=shape) for k, (shape, dt) in specs.items()}
        else:
            self._files = None
            arrays = {k: np.zeros(shape, dtype=dt) for k, (shape, dt) in specs.items()}
        arrays["input_ids"][:] = self.pad_token_id
        if with_lm_labels:
            arrays["lm_label_ids"][:] = -1
        self._fill(arrays, tokenizer)
        if reduce_memory:
            for a in arrays.values():
                a.flush()
            arrays = self._open_readonly()
        self._arrays = arrays

    # -- reading ---------------------------------------------------------------------------------------------------
    def _fill(self, arrays: dict, tokenizer) -> None:
        vocab = tokenizer.get_vocab()
        unk = tokenizer.unk_token
        where = self.data_file
        count = 0
        lines = iter_text_lines(self.data_file, "--pregenerated_data")
        for lineno, line in tqdm(lines, total=self.num_examples, desc=f"Loading {os.path.basename(where)}",
                                 mininterval=2.0):
            line = line.strip()
            if not line:
                continue
            if count >= self.num_examples:
                raise UserError(f"{where}:{lineno}: more examples than num_training_examples "
                                f"{self.num_examples} in its metrics file")
            try:
                example = json.loads(line)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}:{lineno}: not valid JSON ({err.msg})")
            if not isinstance(example, dict) or any(k not in example for k in REQUIRED_KEYS):
                missing = [k for k in REQUIRED_KEYS if not isinstance(example, dict) or k not in example]
                raise UserError(f"{where}:{lineno}: missing key(s) {', '.join(missing)}")
            tokens, segments = example["tokens"], example["segment_ids"]
            n = len(tokens)
            if n > self.max_seq_len or n == 0:
                raise UserError(f"{where}:{lineno}: {n} tokens, but max_seq_len is {self.max_seq_len}")
            if len(segments) != n:
                raise UserError(f"{where}:{lineno}: {len(segments)} segment_ids for {n} tokens")
            ids = [vocab.get(tok, -1) for tok in tokens]
            if -1 in ids:
                bad = tokens[ids.index(-1)]
                raise UserError(
                    f"{where}:{lineno}: token {bad!r} is not in the teacher's vocabulary "
                    f"(was the data pregenerated with another tokenizer? unknown token is {unk!r})"
                )
            i = count
            arrays["input_ids"][i, :n] = ids
            arrays["segment_ids"][i, :n] = segments
            arrays["lengths"][i] = n
            arrays["is_random_next"][i] = bool(example["is_random_next"])
            if self.with_lm_labels:
                positions, labels = example["masked_lm_positions"], example["masked_lm_labels"]
                if len(positions) != len(labels) or any(not 0 <= p < n for p in positions):
                    raise UserError(f"{where}:{lineno}: masked_lm_positions do not match masked_lm_labels/tokens")
                label_ids = [vocab.get(tok, -1) for tok in labels]
                if -1 in label_ids:
                    raise UserError(f"{where}:{lineno}: masked_lm_label {labels[label_ids.index(-1)]!r} not in vocabulary")
                arrays["lm_label_ids"][i, positions] = label_ids
            count += 1
        if count != self.num_examples:
            raise UserError(
                f"{where}: {count} examples, but its metrics file says num_training_examples {self.num_examples}"
            )

    def _open_readonly(self) -> dict:
        return {k: np.memmap(self._files[k], mode="r", dtype=dt, shape=shape) for k, (shape, dt) in self._specs.items()}

    def __getstate__(self):  # DataLoader workers under spawn: reopen the memory maps instead of copying them
        state = self.__dict__.copy()
        if self._files is not None:
            state["_arrays"] = None
            state["_tmp"] = None  # only the creating process removes the folder
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._arrays is None:
            self._arrays = self._open_readonly()

    # -- access ----------------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        a = self._arrays
        n = int(a["lengths"][index])
        item = {
            "input_ids": torch.from_numpy(np.asarray(a["input_ids"][index, :n], dtype=np.int64)),
            "attention_mask": torch.ones(n, dtype=torch.long),
            "token_type_ids": torch.from_numpy(np.asarray(a["segment_ids"][index, :n], dtype=np.int64)),
            "is_random_next": torch.tensor(bool(a["is_random_next"][index])),
        }
        if self.with_lm_labels:
            item["lm_label_ids"] = torch.from_numpy(np.asarray(a["lm_label_ids"][index, :n], dtype=np.int64))
        return item


class ShardedEpoch(Dataset):
    """One data epoch stored as binary shards (see the module docstring): the same items as PregeneratedEpoch,
    read straight from memory-mapped token ids, so opening it costs nothing and memory does not grow with it."""

    def __init__(self, metrics_file: str, tokenizer, max_positions: int | None = None, with_lm_labels: bool = False,
                 **_unused):
        manifest = read_json_file(metrics_file, "--pregenerated_data", "metrics file")
        self.num_examples, self.max_seq_len = read_metrics(metrics_file)
        if max_positions is not None and self.max_seq_len > max_positions:
            raise UserError(f"{metrics_file}: max_seq_len {self.max_seq_len} exceeds the teacher's {max_positions} positions")
        check_vocabulary(manifest, metrics_file, tokenizer)
        self.rows = ShardedRows(os.path.dirname(os.path.abspath(metrics_file)), manifest.get("shards") or [],
                                EPOCH_RAGGED, EPOCH_SCALARS, where=metrics_file,
                                limits={"input_ids": len(tokenizer), "masked_lm_labels": len(tokenizer),
                                        "masked_lm_positions": self.max_seq_len})
        if len(self.rows) != self.num_examples:
            raise UserError(f"{metrics_file}: its shards hold {len(self.rows)} examples, not num_training_examples "
                            f"{self.num_examples}")
        self.with_lm_labels = with_lm_labels

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        row = self.rows.row(index)
        ids = torch.from_numpy(row["input_ids"].astype(np.int64))
        n = len(ids)
        token_type_ids = torch.zeros(n, dtype=torch.long)
        token_type_ids[row["segment_b_start"]:] = 1
        item = {"input_ids": ids, "attention_mask": torch.ones(n, dtype=torch.long), "token_type_ids": token_type_ids,
                "is_random_next": torch.tensor(bool(row["is_random_next"]))}
        if self.with_lm_labels:
            labels = torch.full((n,), -1, dtype=torch.long)
            labels[torch.from_numpy(row["masked_lm_positions"].astype(np.int64))] = torch.from_numpy(
                row["masked_lm_labels"].astype(np.int64))
            item["lm_label_ids"] = labels
        return item


class PackedBlocks(Dataset):
    """Packed sequences (`pregenerate_training_data.py --packed_sequences`): item i is block i, [CLS] ... [SEP] of
    max_seq_len tokens (the last block may be shorter), one segment, no padding inside. Shuffle it in the runtime."""

    def __init__(self, folder: str, tokenizer, max_positions: int | None = None,
                 argname: str = "--pregenerated_data"):
        path = os.path.join(folder, PACKED_MANIFEST)
        if not os.path.isfile(path):
            raise UserError(f"{argname} {folder}: no packed_metrics.json (pregenerate with --packed_sequences)")
        manifest = read_json_file(path, argname, "metrics file")
        try:
            self.num_blocks, self.max_seq_len = int(manifest["num_blocks"]), int(manifest["max_seq_len"])
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{path}: expected integer num_blocks and max_seq_len")
        if max_positions is not None and self.max_seq_len > max_positions:
            raise UserError(f"{path}: max_seq_len {self.max_seq_len} exceeds the teacher's {max_positions} positions")
        check_vocabulary(manifest, path, tokenizer)
        self.rows = ShardedRows(folder, manifest.get("shards") or [], ("input_ids",), where=path,
                                limits={"input_ids": len(tokenizer)})
        if len(self.rows) != self.num_blocks:
            raise UserError(f"{path}: its shards hold {len(self.rows)} blocks, not num_blocks {self.num_blocks}")

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> dict:
        ids = torch.from_numpy(self.rows.row(index)["input_ids"].astype(np.int64))
        n = len(ids)
        return {"input_ids": ids, "attention_mask": torch.ones(n, dtype=torch.long),
                "token_type_ids": torch.zeros(n, dtype=torch.long)}


def is_packed(folder: str) -> bool:
    """Whether `folder` holds packed sequences rather than epochs."""
    return os.path.isfile(os.path.join(folder, PACKED_MANIFEST)) and not (
        os.path.isfile(os.path.join(folder, "epoch_0_metrics.json")))


class PregeneratedTrainingData(Dataset):
    """All the examples of a run, in TinyBERT's order: training epoch e reads data epoch e % num_data_epochs.

    Index i runs through training epoch 0 (data epoch 0, shuffled with a permutation seeded by seed + 0), then
    training epoch 1 (data epoch 1 % D, seed + 1), and so on, so the run sees each epoch file in turn, as the
    original's per-epoch loop did. Give it to the training runtime with `shuffle=False` (the shuffling is done
    here, deterministically, so exact resume and DDP sharding still hold). Epoch files are loaded lazily, one at a
    time; access is sequential apart from the shuffle inside an epoch.
    """

    def __init__(self, folder: str, tokenizer, num_train_epochs: int = 1, seed: int = 42, reduce_memory: bool = False,
                 max_positions: int | None = None, with_lm_labels: bool = False, shuffle: bool = True,
                 argname: str = "--pregenerated_data"):
        self.epochs = find_data_epochs(folder, argname)
        self.metrics = [read_metrics(m) for _, m in self.epochs]
        if max_positions is not None:
            for (_, metrics_file), (_, seq_len) in zip(self.epochs, self.metrics):
                if seq_len > max_positions:
                    raise UserError(f"{metrics_file}: max_seq_len {seq_len} exceeds the teacher's {max_positions} positions")
        if num_train_epochs < 1:
            raise ValueError("num_train_epochs must be >= 1")
        self.num_train_epochs = num_train_epochs
        self.seed = seed
        self.shuffle = shuffle
        self._kwargs = dict(tokenizer=tokenizer, reduce_memory=reduce_memory, max_positions=max_positions,
                            with_lm_labels=with_lm_labels)
        sizes = self.samples_per_epoch()
        self.offsets = [sum(sizes[:e]) for e in range(num_train_epochs + 1)]
        self._data = (None, None)  # (data epoch index, PregeneratedEpoch)
        self._order = (None, None)  # (training epoch, permutation)
        if self.num_train_epochs > self.num_data_epochs:
            logger.warning("only %d epoch(s) of pregenerated data for %d training epochs: data epochs are reused in turn",
                           self.num_data_epochs, self.num_train_epochs)

    @property
    def num_data_epochs(self) -> int:
        return len(self.epochs)

    def samples_per_epoch(self) -> list[int]:
        """Examples in each training epoch (from the metrics files)."""
        return [self.metrics[e % self.num_data_epochs][0] for e in range(self.num_train_epochs)]

    def data_epoch(self, index: int) -> PregeneratedEpoch:
        """The loaded data epoch `index` (the previously loaded one is released first)."""
        if self._data[0] != index:
            self._data = (None, None)
            data_file, metrics_file = self.epochs[index]
            if data_file is None:  # binary shards
                epoch = ShardedEpoch(metrics_file, **self._kwargs)
            else:
                epoch = PregeneratedEpoch(data_file, metrics_file, **self._kwargs)
            self._data = (index, epoch)
        return self._data[1]

    def _position(self, epoch: int, local: int) -> int:
        if not self.shuffle:
            return local
        if self._order[0] != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._order = (epoch, torch.randperm(self.offsets[epoch + 1] - self.offsets[epoch], generator=g))
        return int(self._order[1][local])

    def __len__(self) -> int:
        return self.offsets[-1]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(index)
        epoch = bisect.bisect_right(self.offsets, index) - 1
        local = index - self.offsets[epoch]
        return self.data_epoch(epoch % self.num_data_epochs)[self._position(epoch, local)]


class PregeneratedCollator:
    """Pads a list of items to the longest one: input_ids with the pad id, attention_mask/token_type_ids with 0.

    `use_token_type_ids=False` drops token_type_ids (RoBERTa / XLM-R have a single token type).
    Returns exactly the model inputs: {"input_ids", "attention_mask"[, "token_type_ids"]}.
    """

    def __init__(self, pad_token_id: int, use_token_type_ids: bool = True):
        self.pad_token_id = pad_token_id
        self.use_token_type_ids = use_token_type_ids

    def __call__(self, items: list[dict]) -> dict:
        types = [it["token_type_ids"] for it in items] if self.use_token_type_ids else None
        return pad_batch([it["input_ids"] for it in items], types, self.pad_token_id)
