"""Binary, memory-mapped row shards: the on-disk format of pregenerated corpora that scale.

A shard is a set of `.npy` files sharing a prefix, holding `rows` records. Each record has

* ragged fields: a variable-length integer array each (token ids, masked positions, ...), stored concatenated in
  `<prefix>.<field>.npy` with `rows + 1` int64 start offsets in `<prefix>.<field>.offsets.npy`;
* scalar fields: one integer each, in `<prefix>.<field>.npy` (`rows` values).

Token ids are uint16 when the vocabulary fits (<= 65,536 ids), else uint32 (`token_dtype`). Every file is read
with `numpy.load(..., mmap_mode="r", allow_pickle=False)`: opening a shard reads no data, and a rank that reads
rows i, j, ... touches only the pages holding them, so resident memory does not grow with the corpus and ranks
need not read one another's rows. Files are written under temporary names and renamed when the shard is complete.
The list of shards and their row counts lives in a manifest (JSON) that the writer of the corpus saves last.
"""
from __future__ import annotations

import bisect
import hashlib
import os

import numpy as np

from .errors import UserError
from .files import atomic_open


# The two corpora written as shards (pregenerate_training_data.py):
# * a masked-LM / sentence-pair epoch (TinyBERT): epoch_N/shard_*, listed by epoch_N_metrics.json. Ragged: token ids,
#   masked positions and their labels; scalars: where segment B starts (segment ids are 0 before, 1 from there on)
#   and the next-sentence flag.
EPOCH_RAGGED = ("input_ids", "masked_lm_positions", "masked_lm_labels")
EPOCH_SCALARS = ("segment_b_start", "is_random_next")
# * packed sequences (MiniLM): packed/shard_*, listed by packed_metrics.json; token ids only.
PACKED_DIR, PACKED_MANIFEST = "packed", "packed_metrics.json"


def epoch_shard_fields(vocab_size: int) -> tuple[dict, dict]:
    """dtypes of the ragged and scalar fields of an epoch shard."""
    ids = token_dtype(vocab_size)
    return ({"input_ids": ids, "masked_lm_positions": np.uint16, "masked_lm_labels": ids},
            {"segment_b_start": np.uint16, "is_random_next": np.uint8})


def vocab_sha1(id_to_token: list[str]) -> str:
    """Fingerprint of a vocabulary (its tokens in id order): corpora of ids store it, readers compare it."""
    return hashlib.sha1("\n".join(id_to_token).encode("utf-8")).hexdigest()


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id < 65,536 fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def _save_npy_atomic(path: str, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


class ShardWriter:
    """Collects records in memory (a shard is small: a few thousand documents' worth) and writes them on close().

        w = ShardWriter(prefix, ragged={"input_ids": np.uint16}, scalars={"is_random_next": np.uint8})
        w.add(input_ids=[101, 7, 102], is_random_next=0)
        info = w.close()      # {"prefix": basename of prefix, "rows": 1}
    """

    def __init__(self, prefix: str, ragged: dict, scalars: dict | None = None):
        self.prefix = prefix
        self.ragged = {k: np.dtype(v) for k, v in ragged.items()}
        self.scalars = {k: np.dtype(v) for k, v in (scalars or {}).items()}
        self._values = {k: [] for k in self.ragged}
        self._lengths = {k: [] for k in self.ragged}
        self._scalar_values = {k: [] for k in self.scalars}
        self.rows = 0

    def add(self, **fields) -> None:
        for k, dtype in self.ragged.items():
            values = np.asarray(fields[k])
            if values.size and (values.min() < np.iinfo(dtype).min or values.max() > np.iinfo(dtype).max):
                raise ValueError(f"{k}: values outside {dtype} range")
            self._values[k].append(values.astype(dtype, copy=False))
            self._lengths[k].append(values.size)
        for k in self.scalars:
            self._scalar_values[k].append(int(fields[k]))
        self.rows += 1

    def close(self) -> dict:
        for k, dtype in self.ragged.items():
            values = np.concatenate(self._values[k]) if self._values[k] else np.zeros(0, dtype=dtype)
            offsets = np.zeros(self.rows + 1, dtype=np.int64)
            np.cumsum(np.asarray(self._lengths[k], dtype=np.int64), out=offsets[1:])
            _save_npy_atomic(f"{self.prefix}.{k}.npy", values)
            _save_npy_atomic(f"{self.prefix}.{k}.offsets.npy", offsets)
        for k, dtype in self.scalars.items():
            _save_npy_atomic(f"{self.prefix}.{k}.npy", np.asarray(self._scalar_values[k], dtype=dtype))
        return {"prefix": os.path.basename(self.prefix), "rows": self.rows}


def shard_files(prefix: str, ragged, scalars) -> list[str]:
    """The files of one shard."""
    return ([f"{prefix}.{k}.npy" for k in ragged] + [f"{prefix}.{k}.offsets.npy" for k in ragged]
            + [f"{prefix}.{k}.npy" for k in scalars])


class ShardedRows:
    """Read-only view of the records of several shards (in order), memory-mapped lazily, one shard at a time.

    `shards`: [{"prefix": name relative to `folder`, "rows": n}, ...] as the manifest lists them. row(i) returns
    {field: numpy array (ragged) or int (scalar)}. Picklable for DataLoader workers: maps are reopened there.
    `limits` {field: n}: every value of that field must be below n (token ids below the vocabulary size), checked
    once per shard when it is first opened, so a damaged file is one clear error, not an IndexError at step 7.
    """

    MAX_OPEN_SHARDS = 64

    def __init__(self, folder: str, shards: list[dict], ragged, scalars=(), where: str = "",
                 limits: dict[str, int] | None = None):
        self.folder = folder
        self.limits, self._checked = dict(limits or {}), set()
        self.shards = list(shards)
        self.ragged, self.scalars = tuple(ragged), tuple(scalars)
        self.where = where or folder
        self.starts = [0]
        for s in self.shards:
            self.starts.append(self.starts[-1] + int(s["rows"]))
        for s in self.shards:
            for path in shard_files(os.path.join(folder, s["prefix"]), self.ragged, self.scalars):
                if not os.path.isfile(path):
                    raise UserError(f"{self.where}: shard file {path} is missing (pregenerate the data again)")
        self._open: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.starts[-1]

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_open"] = {}
        return state

    def shard(self, k: int) -> dict:
        """The memory maps of shard k (opened on first use; checked against the manifest's row count)."""
        maps = self._open.get(k)
        if maps is None:
            prefix = os.path.join(self.folder, self.shards[k]["prefix"])
            maps = {}
            try:
                for f in self.ragged:
                    maps[f] = np.load(f"{prefix}.{f}.npy", mmap_mode="r", allow_pickle=False)
                    maps[f + ".offsets"] = np.load(f"{prefix}.{f}.offsets.npy", mmap_mode="r", allow_pickle=False)
                for f in self.scalars:
                    maps[f] = np.load(f"{prefix}.{f}.npy", mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise UserError(f"{self.where}: cannot read shard {prefix} ({err})")
            rows = self.shards[k]["rows"]
            bad = [f for f in self.ragged if len(maps[f + ".offsets"]) != rows + 1 or maps[f + ".offsets"][-1] != len(maps[f])]
            bad += [f for f in self.scalars if len(maps[f]) != rows]
            if bad:
                raise UserError(f"{self.where}: shard {prefix} does not hold the {rows} rows its manifest says "
                                f"(field {bad[0]}); pregenerate the data again")
            if k not in self._checked:
                self._check_limits(prefix, maps)
                self._checked.add(k)
            if len(self._open) >= self.MAX_OPEN_SHARDS:  # each map holds a file descriptor: close the oldest
                self._open.pop(next(iter(self._open)))
            self._open[k] = maps
        return maps

    def _check_limits(self, prefix: str, maps: dict) -> None:
        for field, limit in self.limits.items():
            values = maps[field]
            if len(values) and int(values.max()) >= limit:
                raise UserError(f"{self.where}: shard {prefix} holds {field} value {int(values.max())}, outside "
                                f"0..{limit - 1}; the file is damaged: pregenerate the data again")

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row within the shard) of global row `index`."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        k = bisect.bisect_right(self.starts, index) - 1
        return k, index - self.starts[k]

    def row(self, index: int) -> dict:
        k, i = self.locate(index)
        maps = self.shard(k)
        out = {}
        for f in self.ragged:
            offsets = maps[f + ".offsets"]
            out[f] = np.asarray(maps[f][int(offsets[i]):int(offsets[i + 1])])
        for f in self.scalars:
            out[f] = int(maps[f][i])
        return out
