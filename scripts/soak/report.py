"""The soak's markdown table (a row per round, the totals, the workers' memory, the verdict)
and its plot (worker memory and unanswered events, faults shaded)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .faults import FAULTS


def markdown(summary: dict[str, Any]) -> str:
    def fmt(n: object) -> str:
        return f"{n:,}" if isinstance(n, int) else str(n)

    def reasons(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items())) or "0"

    lines = [
        f"Soak: seed {summary['seed']}, {summary['minutes']:g} min at {summary['rate']:g} events/s, "
        f"faults every {summary['fault_every_s'][0]:.0f}-{summary['fault_every_s'][1]:.0f} s, "
        f"run dir {summary['run_dir']}",
        "",
        "| t (s) | fault | events | lost | duplicates | dead letters written | fault (s) | recovery (s) "
        "| worker RSS (MB) | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        recovery = f"{r['recovery_s']:.1f}" if r["recovery_s"] is not None else "**none**"
        lines.append(
            f"| {r['t_s']:.0f} | {r['fault']} | {fmt(r['events'])} | {fmt(r['lost'])} | "
            f"{fmt(r['duplicates'])} | {reasons(r['dead_letters'])} | {r['fault_s']:.1f} | {recovery} | "
            f"{r['rss']} | {'; '.join(r['notes'])} |"
        )
    t = summary["totals"]
    books = summary["books"]
    lines.append(
        f"| **total** | {sum(t['faults'].values())} faults {t['faults']}, {t['broker_recycles']} broker "
        f"recycles, wall {summary['wall_s']:.0f} s | **{fmt(t['events_in'])}** | **{fmt(t['lost'])}** | "
        f"**{fmt(t['duplicates'])}** | {fmt(t['dead_letters'])}: {reasons(t['dead_letter_reasons'])} | | "
        f"p50 {t['p50_ms']} / p99 {t['p99_ms']} ms | | recommendations {fmt(t['recommendations'])} "
        f"(fresh audit of {len(summary['epochs'])} epoch(s)); books: in {fmt(books.get('events_in'))}, "
        f"lost {fmt(books.get('lost'))}, duplicates {fmt(books.get('duplicates'))} |"
    )
    for e in summary["epochs"]:
        if "history_answered" in e:
            lines.append(
                f"\nEpoch {e['epoch']} histories: {fmt(e['history_naming'])} of {fmt(e['history_answered'])} "
                f"recommendations name an item of the user's recent history; "
                f"{fmt(e['changelog_users_wrong'])} users' changelog histories differ from the inputs'"
            )
    lines += [
        "",
        "| worker | epoch | role | life (s) | first | after warm-up | last | max (MB) | growth | end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for w in summary["workers"]:
        growth = f"{w['growth']:+.0%}" if w["growth"] is not None else "(short)"
        growth += " **FLAG**" if w["flagged"] else ""
        lines.append(
            f"| {w['name']} | {w['epoch']} | {w['role']} | {w['life_s']:.0f} | {w['first_mb']} | "
            f"{w['warm_mb']} | {w['last_mb']} | {w['max_mb']} | {growth} "
            f"| {w['end']} |"
        )
    lines.append("")
    verdict = "FAIL: " + "; ".join(summary["failures"]) if summary["failures"] else "PASS: lost 0, no crash"
    lines.append(verdict)
    lines += [f"FLAG: {f}" for f in summary["flags"]]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], out: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = summary["samples"]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=(2, 1))
    for w in summary["workers"]:
        points = [(s["t"], s["rss_mb"][w["name"]]) for s in samples if w["name"] in s["rss_mb"]]
        if points:
            ax.plot(*zip(*points, strict=True), label=w["name"], linewidth=1)
    for r in summary["rows"]:
        if r["kind"] in FAULTS or r["kind"] == "recycle":
            color = "tab:red" if r["kind"] != "recycle" else "tab:gray"
            for a in (ax, ax2):
                a.axvspan(r["t_s"], r["t_s"] + max(r["fault_s"], 1.0), color=color, alpha=0.15)
            ax.annotate(
                r["kind"],
                (r["t_s"], 1.0),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                rotation=90,
                va="top",
            )
    ax.set_ylabel("worker RSS (MB)")
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    ax.set_title(f"soak, seed {summary['seed']}: worker memory and unanswered events (faults shaded)")
    ax2.plot([s["t"] for s in samples], [s["unanswered_5s"] for s in samples], color="tab:purple")
    ax2.set_ylabel("unanswered > 5 s")
    ax2.set_xlabel("seconds since start")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True
