"""Never count a run twice: the same run dir reached twice, or two runs of one config and seed.

A sweep can hold one training run more than once: a run dir reached through two paths (a symlink, a sweep dir
given twice), or a run launched again into a new dir with the same config and seed (a relaunch after a change of
``run_root``, a copy). Averaging both would count that seed twice. The rule: of the runs with one resolved
config (its cell, records.cell_id) and seed, the one that logged the most steps is counted; on a tie a finished
run beats an unfinished one, then the first in load order wins. The others are listed (report, runs.csv) as
repeats of the counted run, with a warning, and are left out of every table and curve. Runs without a config
or a seed cannot be matched and are always counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from moda_lab.analysis.records import RunRecord, cell_id, config_columns

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Repeat:
    """A run left out because ``kept`` (a run name) is the same run, or the same config and seed."""

    record: RunRecord
    kept: str
    why: str  # "same run dir" | "same config and seed"


def last_step(record: RunRecord) -> float:
    """The furthest step a run logged; -1 without any."""
    hist = record.history
    return float(hist["step"].max()) if "step" in hist and hist["step"].notna().any() else -1.0


def _rank(record: RunRecord, order: int) -> tuple:
    return (last_step(record), record.status == "finished", -order)


def split_repeats(records: list[RunRecord]) -> tuple[list[RunRecord], list[Repeat]]:
    """(the runs counted, in load order; the repeats left out), by the rule in the module docstring."""
    repeats: list[Repeat] = []
    seen_dirs: dict[Path, RunRecord] = {}
    unique: list[RunRecord] = []
    for rec in records:
        where = Path(rec.path).resolve() if rec.source == "local" and rec.path else None
        if where is not None and where in seen_dirs:
            repeats.append(Repeat(rec, seen_dirs[where].run, "same run dir"))
            continue
        if where is not None:
            seen_dirs[where] = rec
        unique.append(rec)
    groups: dict[tuple[str, object], list[int]] = {}
    for i, rec in enumerate(unique):
        seed = config_columns(rec.config)["seed"]
        if rec.config and seed is not None:
            groups.setdefault((cell_id(rec.config), seed), []).append(i)
    left_out: set[int] = set()
    for members in groups.values():
        if len(members) < 2:
            continue
        best = max(members, key=lambda i: _rank(unique[i], i))
        for i in members:
            if i != best:
                left_out.add(i)
                repeats.append(Repeat(unique[i], unique[best].run, "same config and seed"))
    for rep in repeats:
        log.warning("%s is not counted: %s as %s", rep.record.run, rep.why, rep.kept)
    return [rec for i, rec in enumerate(unique) if i not in left_out], repeats
