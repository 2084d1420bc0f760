"""Test helper: run a script as its own process, forked from the (warm) test process instead of a new interpreter.

A new interpreter spends seconds importing torch and transformers; a child forked from a test process that already
imported them starts in milliseconds. The child drops every module of the project (they are imported afresh, as in
a new interpreter), removes pytest's log capture, points fds 1/2 at pipes and runs the script file as `__main__`,
so the exit code and the stdout/stderr bytes are those of `python SCRIPT ARGS...`.
"""
import io
import logging
import os
import runpy
import selectors
import sys
import time
import traceback

PROJECT_PACKAGES = ("kdcore", "tinybert", "minilm", "pipelines")
TEST_HELPERS = ("conftest", "pregenerated_writer", "forked", "toy_train", "fault_train")


def _child(script_path, argv, env, out_w, err_w):
    code = 1
    try:
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), line_buffering=True)
        sys.stderr = io.TextIOWrapper(os.fdopen(2, "wb", closefd=False), line_buffering=True)
        for name in list(sys.modules):
            if name.split(".")[0] in PROJECT_PACKAGES or name in TEST_HELPERS:
                del sys.modules[name]
        logging.root.handlers.clear()  # pytest's capture handlers; the script configures its own
        os.environ.update(env or {})
        sys.argv = [script_path, *argv]
        sys.path[0] = os.path.dirname(os.path.abspath(script_path))
        runpy.run_path(script_path, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def run_forked(script_path, argv, env=None, timeout=300):
    """(exit code, stdout, stderr) of `python script_path *argv`, run in a forked child. A child killed by a
    signal has exit code -signum, as with subprocess."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(out_r)
        os.close(err_r)
        _child(script_path, argv, env, out_w, err_w)
    os.close(out_w)
    os.close(err_w)
    chunks = {out_r: [], err_r: []}
    sel = selectors.DefaultSelector()
    for fd in chunks:
        sel.register(fd, selectors.EVENT_READ)
    open_fds, deadline = set(chunks), time.time() + timeout
    while open_fds:
        if time.time() > deadline:
            os.kill(pid, 9)
            break
        for key, _ in sel.select(timeout=1.0):
            data = os.read(key.fd, 65536)
            if data:
                chunks[key.fd].append(data)
            else:
                sel.unregister(key.fd)
                open_fds.discard(key.fd)
    sel.close()
    os.close(out_r)
    os.close(err_r)
    _, status = os.waitpid(pid, 0)
    decode = lambda fd: b"".join(chunks[fd]).decode("utf-8", "backslashreplace")  # noqa: E731
    return os.waitstatus_to_exitcode(status), decode(out_r), decode(err_r)
