"""Run a Python script as __main__ and write its wall time and peak memory (max RSS) to a JSON file at exit.

    python bench/run_with_rusage.py RESULT.json SCRIPT.py [script args ...]

RESULT.json: {"exit_code", "wall_s", "maxrss_self_MB" (this process), "maxrss_children_MB" (the largest of its
waited-for child processes), "maxrss_MB" (the larger of the two), "vmhwm_MB" (Linux: the peak RSS of this process's
own memory since it started the script, free of the spawning parent's peak that ru_maxrss may inherit; else null)}. ru_maxrss is in KiB on Linux, bytes on macOS.
A child started with vfork/posix_spawn (e.g. ctypes' `ldconfig -p`) shares the parent's memory until it execs and
so reports the parent's RSS of that moment: children <= self means no worker grew larger than the main process.
"""
import json
import os
import resource
import runpy
import sys
import time


def maxrss_to_mb(value: int) -> float:
    return value / (1024 * 1024) if sys.platform == "darwin" else value / 1024


def vmhwm_mb(reset: bool = False):
    """Peak resident memory of this process in MB: VmHWM of /proc/self/status, which `reset` first lowers to the
    current RSS (Linux); None where there is no /proc. Unlike ru_maxrss, it does not inherit a spawning parent's
    peak."""
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return None


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    result_path, script = sys.argv[1], sys.argv[2]
    sys.argv = sys.argv[2:]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    code = 0
    start = time.perf_counter()
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        code = 1
        raise
    finally:
        wall = time.perf_counter() - start
        me = maxrss_to_mb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        kids = maxrss_to_mb(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        with open(result_path, "w") as f:
            json.dump({"exit_code": code, "wall_s": wall, "maxrss_self_MB": me, "maxrss_children_MB": kids,
                       "maxrss_MB": max(me, kids), "vmhwm_MB": vmhwm_mb()}, f)
    sys.exit(code)


if __name__ == "__main__":
    main()
