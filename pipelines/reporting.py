"""What the pipelines report: a row's mean and spread over seeds, its table cell, loss curves as a PNG."""
from __future__ import annotations

import json
import os
import statistics

from kdcore.files import atomic_path


def plot_loss_curves(logs: dict[str, str], out_png: str) -> None:
    """One panel per stage: every loss term of its train_log.jsonl against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(logs), figsize=(5 * len(logs), 3.6))
    for ax, (title, path) in zip(axes, logs.items()):
        records = [json.loads(line) for line in open(path) if line.strip()] if os.path.isfile(path) else []
        records = [r for r in records if "lr" in r]  # training records, not evaluation ones
        skip = {"step", "epoch", "lr", "tokens_per_s", "grad_norm"}
        keys = sorted({k for r in records for k in r if k not in skip})
        for k in keys:
            pts = [(r["step"], r[k]) for r in records if k in r]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=k, linewidth=1.2,
                    marker="." if len(pts) < 30 else None)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=7)
    save_figure(fig, out_png)


def mean_spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max of one row's per-seed values."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values), "values": list(values)}


def format_stat(stat: dict | None, scale: float = 1.0) -> str:
    if stat is None:
        return "-"
    if stat["n"] == 1:
        return f"{scale * stat['mean']:.2f}"
    return (f"{scale * stat['mean']:.2f} ± {scale * stat['std']:.2f} "
            f"({scale * stat['min']:.2f}-{scale * stat['max']:.2f})")


def save_figure(fig, out_png: str) -> None:
    """Lay out, write atomically (a reader never sees half a PNG) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out_png, suffix=".tmp.png") as tmp:  # matplotlib picks the format by the extension
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
