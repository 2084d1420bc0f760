"""Shared pieces of the benchmark scripts: timing, the machine's own matmul rate, table + JSON output."""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from kdcore.cli import ArgumentParser  # noqa: E402
from kdcore.files import atomic_write_json, default_data_dir  # noqa: E402
from kdcore.runtime import cpu_model_and_flags as kdcore_cpu_model_and_flags  # noqa: E402


def bench_parser(doc: str, preset_helps: dict, data_dir: bool = False):
    """An argparse parser with mutually exclusive --quick (the default) / --full / --smoke presets (`preset_helps`
    says what each runs) and, with `data_dir`, --data_dir (default: default_data_dir())."""
    parser = ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    for name in ("quick", "full", "smoke"):
        group.add_argument(f"--{name}", dest="preset", action="store_const", const=name, help=preset_helps[name],
                           identifies=False)
    if data_dir:
        parser.add_argument("--data_dir", default=default_data_dir(), help="real data folder ($KD_SHARED_DATA)",
                            identifies=False)
    return parser


def apply_preset(args, presets: dict) -> str:
    """Fill every argument left at None from the chosen preset (default quick); returns the preset's name."""
    args.preset = args.preset or "quick"
    for key, value in presets[args.preset].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args.preset


def median(values):
    """The median of a list of numbers (the mean of the two middle ones for an even count)."""
    return statistics.median(values)


def timed(fn, repeat: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeat` runs after `warmup` runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def timed_round_robin(fns: dict, repeat: int, warmup: int = 1) -> dict:
    """Median seconds of each callable, measured in interleaved rounds (a, b, c, a, b, c, ...), so that a slow
    moment of a shared machine hits every candidate alike and the ratios stay fair."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            times[k].append(timed(fn, repeat=1, warmup=0))
    return {k: median(v) for k, v in times.items()}


def matmul_flops_per_s(device: torch.device, dtype=torch.float32, n: int = 1024, repeat: int = 5) -> float:
    """This machine's dense matmul rate (FLOP/s) for an n x n x n product: the yardstick for utilisation."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = timed(lambda: a @ b, repeat=repeat, warmup=2)
    return 2 * n**3 / seconds


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and the matrix / vector extensions that decide its bf16 speed."""
    model, flags = kdcore_cpu_model_and_flags()
    return model, [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if flag in flags]


def machine_info(device: torch.device) -> dict:
    model, flags = cpu_model_and_flags()
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": model, "cpu_count": os.cpu_count(), "cpu_flags": flags}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def bf16_is_native(device: torch.device, n: int = 512) -> tuple[bool, float]:
    """(whether bf16 matmuls run at least as fast as fp32 ones here, bf16 rate / fp32 rate). A CPU without
    AVX512-BF16 or AMX emulates bf16 (tens of times slower than fp32): a bf16 step there measures the emulation."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(), float("nan")
    ratio = matmul_flops_per_s(device, torch.bfloat16, n=n, repeat=1) / matmul_flops_per_s(device, torch.float32, n=n,
                                                                                             repeat=3)
    return ratio >= 1.0, ratio


def print_table(name: str, rows: list[dict], columns: list[str]) -> None:
    """Print `rows` as a Markdown table headed `## name`."""
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print(f"\n## {name}")
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)) + " |")


def report(name: str, rows: list[dict], columns: list[str], out_json: str, extra: dict | None = None) -> None:
    """Print `rows` as a Markdown table and write {"benchmark", "machine", "rows", ...} to `out_json`."""
    print_table(name, rows, columns)
    atomic_write_json({"benchmark": name, **(extra or {}), "rows": rows}, out_json)
    print(f"(written to {out_json})")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:,.0f}"
    return "" if v is None else str(v)
