"""tests/toy_train.py with a kill switch in checkpoint saves, for the fault-injection test.

KD_FAULT_SAVE=n     the n-th checkpoint save of this process (1-based) is the faulty one
KD_FAULT_RENAME=k   SIGKILL this process at the k-th rename (os.rename / os.replace) of that save ...
KD_FAULT_WHEN=before|after   ... just before it or just after it
KD_FAULT_COUNT=FILE instead of killing, append "save-number renames" lines to FILE (to learn where renames are)
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import toy_train  # noqa: E402  (puts the repository on sys.path)

import kdcore.checkpoint  # noqa: E402
import kdcore.trainer  # noqa: E402
from kdcore.cli import run_main  # noqa: E402

SAVE = int(os.environ.get("KD_FAULT_SAVE", "0"))
RENAME = int(os.environ.get("KD_FAULT_RENAME", "0"))
WHEN = os.environ.get("KD_FAULT_WHEN", "before")
COUNT_FILE = os.environ.get("KD_FAULT_COUNT")
_state = {"save": 0, "renames": 0, "in_save": False}


def _counting(real):
    def rename(src, dst, *args, **kwargs):
        if not _state["in_save"]:
            return real(src, dst, *args, **kwargs)
        _state["renames"] += 1
        faulty = _state["save"] == SAVE and _state["renames"] == RENAME and not COUNT_FILE
        if faulty and WHEN == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = real(src, dst, *args, **kwargs)
        if faulty and WHEN == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    return rename


os.rename, os.replace = _counting(os.rename), _counting(os.replace)
_real_save = kdcore.checkpoint.save_checkpoint


def save_checkpoint(*args, **kwargs):
    _state.update(save=_state["save"] + 1, renames=0, in_save=True)
    try:
        return _real_save(*args, **kwargs)
    finally:
        _state["in_save"] = False
        if COUNT_FILE:
            with open(COUNT_FILE, "a") as f:
                f.write(f"{_state['save']} {_state['renames']}\n")


kdcore.checkpoint.save_checkpoint = kdcore.trainer.save_checkpoint = save_checkpoint

if __name__ == "__main__":
    run_main(toy_train.main)
