"""The PNG beside the table: throughput per variant and model, and CPU per event split into
the process, Triton and the broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .config import CEILING_VARIANTS, MODELS, VARIANTS
from .stats import aggregate


def plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = aggregate(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.38
    colours = {"recommender": "tab:blue", "trivial": "tab:orange"}
    batched = VARIANTS[1:]  # the CPU panel: naive's ~1.5 s per 1,000 events would flatten the rest
    for m, model in enumerate(MODELS):
        offset = (m - 0.5) * width
        present = [(i + offset, v, agg[(model, v)]) for i, v in enumerate(VARIANTS) if (model, v) in agg]
        if present:
            at = [x for x, _, _ in present]
            rates = [a["rate"] for _, _, a in present]
            err = [
                [a["rate"] - a["rate_min"] for _, _, a in present],
                [a["rate_max"] - a["rate"] for _, _, a in present],
            ]
            ax1.bar(at, rates, width, yerr=err, capsize=4, label=model, color=colours[model])
            for x, rate in zip(at, rates, strict=True):
                ax1.annotate(
                    f"{rate:,.0f}", (x, rate), ha="center", va="bottom", fontsize=7, xytext=(0, 6),
                    textcoords="offset points",
                )  # fmt: skip
        present = [(i + offset, v, agg[(model, v)]) for i, v in enumerate(batched) if (model, v) in agg]
        bottom = np.zeros(len(present))
        for part, hatch in (("cpu_consumer", ""), ("cpu_triton", "//"), ("cpu_broker", "..")):
            # the ceiling has no broker in its path
            vals = np.asarray(
                [0.0 if part == "cpu_broker" and v in CEILING_VARIANTS else a[part] for _, v, a in present]
            )
            ax2.bar(
                [x for x, _, _ in present],
                vals,
                width,
                bottom=bottom,
                color=colours[model],
                hatch=hatch,
                edgecolor="white",
                label=f"{model}: {part.removeprefix('cpu_')}",
            )
            bottom += vals
        for (x, _, _), total in zip(present, bottom, strict=True):
            ax2.annotate(
                f"{total:.3f}", (x, total), ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                textcoords="offset points",
            )  # fmt: skip
    naive = " / ".join(
        f"{sum(agg[(m, 'naive')][k] for k in ('cpu_consumer', 'cpu_triton', 'cpu_broker')):.2f}"
        for m in MODELS
        if (m, "naive") in agg
    )
    ax1.set_xticks(range(len(VARIANTS)), VARIANTS, rotation=20, fontsize=8)
    ax2.set_xticks(range(len(batched)), batched, rotation=20, fontsize=8)
    ax1.set(yscale="log", ylabel="events/s (steady state; whiskers min–max)", title="Throughput")
    ax2.set(
        ylabel="CPU s per 1,000 events",
        title=f"CPU per 1,000 events: process / Triton / broker (naive: {naive})",
    )
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
