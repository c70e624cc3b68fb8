"""The accounting: rows in, out and rejected per stage, summed over parts and checked end to end
(input = kept + rejected for every stage, stage to stage, and in total)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vlmforge.common.errors import AccountingError


@dataclass
class StageStats:
    """Rows in/out and rejection reasons of one stage, summed over batches."""

    name: str
    rows_in: int = 0
    rows_out: int = 0
    reasons: Counter = field(default_factory=Counter)
    counters: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    # Rejected rows sampled for a gallery thumbnail, per reason, in this part (not written to the manifest).
    gallery: Counter = field(default_factory=Counter, repr=False, compare=False)

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def merge(self, other: StageStats) -> None:
        self.rows_in += other.rows_in
        self.rows_out += other.rows_out
        self.reasons.update(other.reasons)
        self.counters.update(other.counters)
        self.seconds += other.seconds

    def to_dict(self) -> dict:
        return {
            "stage": self.name,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rejected": self.rejected,
            "reasons": dict(sorted(self.reasons.items())),
            "counters": dict(sorted(self.counters.items())),
            "seconds": round(self.seconds, 3),
        }

    @classmethod
    def from_done(cls, name: str, rows_in: int, done: dict) -> StageStats:
        """The stats of a global stage from its `_done.json` (seconds, reasons, counters)."""
        stage = cls(name, rows_in=rows_in, seconds=done["seconds"])
        stage.reasons.update(done["reasons"])
        stage.counters.update(done["counters"])
        stage.rows_out = rows_in - stage.rejected
        return stage

    @classmethod
    def from_dict(cls, d: dict) -> StageStats:
        return cls(
            name=d["stage"],
            rows_in=d["rows_in"],
            rows_out=d["rows_out"],
            reasons=Counter(d["reasons"]),
            counters=Counter(d.get("counters", {})),
            seconds=d.get("seconds", 0.0),
        )


def merge_stage_stats(per_part: list[dict]) -> list[StageStats]:
    """Sum the per-part stats of each stage, keeping stage order."""
    merged: dict[str, StageStats] = {}
    for result in per_part:
        for d in result["stages"]:
            s = StageStats.from_dict(d)
            if s.name in merged:
                merged[s.name].merge(s)
            else:
                merged[s.name] = s
    return list(merged.values())


def check_accounting(stages: list[StageStats], output_rows: int, rejected_rows: int) -> dict:
    """Verify rows in = rows out + rejected per stage, stage to stage, and in total."""
    for s in stages:
        if s.rows_in != s.rows_out + s.rejected:
            raise AccountingError(
                f"stage {s.name}: {s.rows_in} in != {s.rows_out} out + {s.rejected} rejected"
            )
    for a, b in zip(stages, stages[1:], strict=False):
        if a.rows_out != b.rows_in:
            raise AccountingError(
                f"stage {a.name} passed {a.rows_out} rows but {b.name} received {b.rows_in}"
            )
    total_in = stages[0].rows_in if stages else 0
    if stages and stages[-1].rows_out != output_rows:
        raise AccountingError(f"last stage kept {stages[-1].rows_out} rows but {output_rows} were written")
    if total_in != output_rows + rejected_rows:
        raise AccountingError(f"{total_in} input rows != {output_rows} written + {rejected_rows} rejected")
    return {"input_rows": total_in, "output_rows": output_rows, "rejected_rows": rejected_rows}
