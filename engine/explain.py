"""``explain()``'s answer: one row per node, its lane and why; prints as a table."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ExplainRow:
    """One node in ``explain()``: its lane, why, and the numbers behind the decision."""

    node: str
    lane: str
    reason: str
    source: str
    measured: str = ""  # the profile's numbers for the node
    change: str = ""  # "cpu -> thread" when the next run moves it
    reads: str = ""  # lean dispatch: what it receives of the state


@dataclass(frozen=True)
class Explanation:
    """One row per node: which lane it runs on and why. Prints as a table.

    ``changes`` lists what changed since the last run (lanes, then numbers);
    ``warnings`` the cpu nodes whose payload costs more to send than compute.
    """

    rows: tuple[ExplainRow, ...]
    changes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[ExplainRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def lane_of(self, node: str) -> str:
        for row in self.rows:
            if row.node == node:
                return row.lane
        raise KeyError(node)

    def __str__(self) -> str:
        headers = ("node", "lane", "decided by", "reason")
        table = [headers] + [(r.node, r.lane, r.source, r.reason) for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(3)]
        lines = []
        for i, row in enumerate(table):
            cells = [row[j].ljust(widths[j]) for j in range(3)] + [row[3]]
            lines.append("  ".join(cells).rstrip())
            if i == 0:
                lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
        measured = [f"  {r.node}: {r.measured}" for r in self.rows if r.measured]
        reads = [f"  {r.node}: {r.reads}" for r in self.rows if r.reads]
        for title, items in (
            ("measured:", measured),
            ("lean dispatch:", reads),
            ("changed since the last run:", [f"  {c}" for c in self.changes]),
            ("warnings:", [f"  {w}" for w in self.warnings]),
        ):
            if items:
                lines += ["", title, *items]
        return "\n".join(lines)


__all__ = ["ExplainRow", "Explanation"]
