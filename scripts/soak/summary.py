"""The soak's summary from its books and records: each round's events, losses and
duplicates, the epochs' fresh audits, the workers' memory, and what fails or flags the run."""

from __future__ import annotations

import bisect
from collections import Counter
from typing import TYPE_CHECKING, Any

from pipeline.audit import combined_summary

from .faults import FAULTS

if TYPE_CHECKING:
    from .run import Soak

DUPLICATES_FLAG_S = 5.0  # a round's duplicates above this much traffic are flagged


def fill_rows(soak: Soak) -> None:
    """Each row's events, lost and duplicates from the books: inputs by produce time."""
    if not soak.rows:
        return
    starts = [row.start_ms for row in soak.rows]
    for ledger in soak.books.ledgers:
        missing = set(ledger.missing())
        for coord, ts in ledger.inputs.items():
            row = soak.rows[max(0, bisect.bisect_right(starts, ts) - 1)]
            row.events += 1
            row.lost += coord in missing
            row.duplicates += max(0, ledger.outputs[coord] - 1)


HISTORY_SHARE_FLAG = 0.002  # of recommendations naming a history item: histories were lost


def summarise(soak: Soak) -> dict[str, Any]:
    """The run's JSON summary: rows, epochs' audits, totals, workers, failures and flags."""
    fill_rows(soak)
    books = combined_summary(soak.books.ledgers) if soak.books.ledgers else {}
    audited = [e for e in soak.epochs if "lost" in e]
    reasons: Counter[str] = Counter()
    for e in audited:
        reasons.update(e["dead_letter_reasons"])
    audit_lost = sum(int(e["lost"]) for e in audited)
    unaudited = len(soak.books.ledgers) - len(audited)
    dup_flag = max(100, int(soak.args.rate * DUPLICATES_FLAG_S))
    now = soak.now_s()
    workers = [life.report(soak.args.warmup, now) for life in soak.crew.lives]
    not_recovered = [f"t={r.t_s:.0f}s {r.fault}" for r in soak.rows if not r.recovered]
    failures = [
        *([f"{audit_lost} events lost (fresh audit)"] if audit_lost else []),
        *([f"{books.get('lost')} events lost (books)"] if books.get("lost") else []),
        *([f"{unaudited} epoch(s) not audited"] if unaudited else []),
        *[f"crash: {c}" for c in soak.crew.crashes],
        *[f"hung: {h}" for h in soak.crew.hung],
        *[f"not recovered: {r}" for r in not_recovered],
        *([f"stopped early: {soak.aborted}"] if soak.aborted else []),
        *[
            f"epoch {e['epoch']}: {e['changelog_users_wrong']} users' changelog histories differ from the "
            f"inputs', e.g. {e['changelog_wrong_examples']}"
            for e in audited
            if e.get("changelog_users_wrong")
        ],
    ]
    flags = [
        *[
            f"t={r.t_s:.0f}s {r.fault}: {r.duplicates} duplicates (> {dup_flag})"
            for r in soak.rows
            if r.duplicates > dup_flag
        ],
        *[
            f"{w['name']}: RSS {w['warm_mb']} → {w['last_mb']} MB after warm-up (+{w['growth']:.0%})"
            for w in workers
            if w["flagged"]
        ],
        *[
            f"epoch {e['epoch']}: {e['history_naming']} of {e['history_answered']} recommendations name an "
            "item of the user's recent history"
            for e in audited
            if e.get("history_answered") and e["history_naming"] > HISTORY_SHARE_FLAG * e["history_answered"]
        ],
    ]
    return {
        "seed": soak.args.seed,
        "minutes": soak.args.minutes,
        "rate": soak.args.rate,
        "fault_every_s": list(soak.fault_every),
        "wall_s": round(now, 1),
        "run_dir": str(soak.run_dir),
        "rows": [vars(r) for r in soak.rows],
        "epochs": soak.epochs,
        "totals": {
            "events_in": sum(int(e["events_in"]) for e in audited),
            "recommendations": sum(int(e["recommendations"]) for e in audited),
            "dead_letters": sum(int(e["dead_letters"]) for e in audited),
            "dead_letter_reasons": dict(sorted(reasons.items())),
            "lost": audit_lost,
            "duplicates": sum(int(e["duplicates"]) for e in audited),
            "p50_ms": books.get("p50_ms"),
            "p99_ms": books.get("p99_ms"),
            "broker_recycles": soak.recycles,
            "faults": dict(Counter(r.kind for r in soak.rows if r.kind in FAULTS)),
        },
        "books": books,
        "workers": workers,
        "crashes": soak.crew.crashes,
        "hung": soak.crew.hung,
        "failures": failures,
        "flags": flags,
        "samples": soak.samples,
    }
