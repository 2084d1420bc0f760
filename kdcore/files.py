"""Reading user files and writing results, with the guarantees every script gives (torch-free).

* `iter_text_lines` – the one line reader for text inputs: strict UTF-8 (a stray byte is an error naming
  file:line and column, never silently replaced), NUL bytes refused (a binary file is not a corpus).
* `file_fingerprint` – what a cache was built from (absolute path, size, modification time, SHA-256), so a cache
  is only reused for the very input it was built from.
* `check_writable_file` – called before the long work, so a run never computes for an hour and then fails to save.
* `atomic_open` – write a result through a temporary file renamed into place: readers see the old file or the
  new one, never half of one.
"""
from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator

from .errors import UserError


def default_data_dir() -> str:
    """The real data folder: $KD_SHARED_DATA, else `shared/data` beside the checkout (../shared/data from its root).
    An installed package has no checkout around it: there, set KD_SHARED_DATA or pass the data options."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.environ.get("KD_SHARED_DATA") or os.path.join(os.path.dirname(checkout), "shared", "data")


def iter_text_lines(path: str, argname: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without its line break) for every line of a UTF-8 text file.

    A leading UTF-8 byte-order mark is dropped. Bytes that are not UTF-8, or a NUL byte (binary data), raise
    `UserError("FILE:LINE: ...")`: decoding per line keeps the line number exact.
    """
    if not path or not os.path.isfile(path):
        raise UserError(f"{argname}: no such file: {path}")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            nul = raw.find(b"\0")
            if nul >= 0:
                raise UserError(f"{path}:{lineno}: binary data (NUL byte at column {nul + 1}), not a text file")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise UserError(f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                                f"{err.start + 1})") from None
            yield lineno, line.rstrip("\n").rstrip("\r")


def read_text_lines(path: str, argname: str) -> list[str]:
    """Every line of a UTF-8 text file (see `iter_text_lines`)."""
    return [line for _, line in iter_text_lines(path, argname)]


def sha256_file(path: str) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_fingerprint(path: str) -> dict[str, str]:
    """Identity of an input file for cache keys: absolute path, size, mtime and SHA-256 of its bytes."""
    st = os.stat(path)
    return {"path": os.path.abspath(path), "size": str(st.st_size), "mtime_ns": str(st.st_mtime_ns),
            "sha256": sha256_file(path)}


def _nearest_existing(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _probe(folder: str, path: str, argname: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise UserError(f"{argname} {path}: cannot write there ({err.strerror or err})")


def check_writable_dir(path: str, argname: str) -> str:
    """Check, before any long work, that an output folder exists and is writable, or can be created (nothing is
    created here, so a run stopped by a later check leaves nothing behind)."""
    found = _nearest_existing(path)
    if not os.path.isdir(found):
        raise UserError(f"{argname} {path}: cannot write there ({found} is a file, not a folder)")
    _probe(found, path, argname)
    return path


def check_writable_file(path: str, argname: str) -> str:
    """Check, before any long work, that `path` can be written. Nothing is created: missing folders only need
    their nearest existing ancestor to be a writable folder (they are made when the result is written)."""
    if os.path.isdir(path):
        raise UserError(f"{argname} {path}: is a folder, expected a file name")
    parent = _nearest_existing(os.path.dirname(os.path.abspath(path)))
    if not os.path.isdir(parent):
        raise UserError(f"{argname} {path}: cannot write there ({parent} is a file, not a folder)")
    _probe(parent, path, argname)
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"{argname} {path}: the file exists and is not writable")
    return path


@contextmanager
def atomic_path(path: str, suffix: str = ".tmp"):
    """A temporary file name beside `path` for a writer that takes a name (safetensors, numpy, matplotlib); on
    success the file replaces `path` in one rename, on failure it is removed. The one temp-and-rename of the toolkit.

    The temporary name starts with "." and ends in `.tmp` (or `suffix`, for writers that go by the extension), so
    one left by a killed process is recognisable (and never read).
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=parent)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results should read like any other file
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def atomic_open(path: str, mode: str = "w", encoding: str | None = "utf-8", newline: str | None = None):
    """Open a temporary file beside `path` for writing (`atomic_path`); on success it replaces `path`."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": encoding, "newline": newline})) as f:
            yield f


def load_config_file(path: str) -> dict:
    if not os.path.isfile(path):
        raise UserError(f"--config: no such file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise UserError(f"--config {path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})")
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except Exception as err:  # json.JSONDecodeError, yaml.YAMLError
        raise UserError(f"--config {path}: not valid {'YAML' if path.endswith(('.yaml', '.yml')) else 'JSON'}: {err}")
    if not isinstance(values, dict):
        raise UserError(f"--config {path}: expected a mapping of argument names to values")
    return values


def read_json_file(path: str, argname: str, what: str = "JSON file"):
    """Parse a JSON file, or raise UserError naming the argument, the file and what was expected."""
    if not os.path.isfile(path):
        raise UserError(f"{argname}: no such file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{argname} {path}: not a {what} ({err})")


@contextmanager
def atomic_dir(path: str):
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename.

    A crash in the middle leaves either the old folder or none, never a half-written one.
    """
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        yield tmp
        old = None
        if os.path.exists(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
            os.rename(path, os.path.join(old, "x"))
        os.rename(tmp, path)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(text: str, path: str) -> None:
    """Write a text file through a temporary file and a rename (readers never see half a file)."""
    with atomic_open(path) as f:
        f.write(text)


def atomic_write_json(obj, path: str) -> None:
    """Write JSON to `path` through a temporary file and a rename."""
    atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)
