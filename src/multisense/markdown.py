"""Markdown output of measured figures: aligned text and markdown tables, and sections of a
docs page rewritten in place between markers (the prose around them is kept).

Used by the benchmarks, the experiments and the comparisons, which each own a section of a page
in docs/.
"""

from __future__ import annotations

from pathlib import Path


class Table:
    def __init__(self, title: str, headers: list[str], note: str = ""):
        self.title, self.headers, self.note, self.rows = title, headers, note, []

    def add(self, *cells) -> None:
        self.rows.append([fmt(c) for c in cells])

    def text(self) -> str:
        cols = list(zip(self.headers, *self.rows))
        widths = [max(len(c) for c in col) for col in cols]
        line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
        out = [self.title, line(self.headers), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in self.rows]
        if self.note:
            out.append(self.note)
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
               "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(self.headers))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in self.rows]
        if self.note:
            out += ["", self.note]
        return "\n".join(out)


def fmt(v) -> str:
    """A number as a table shows it: a few significant digits, '-' for NaN (not measured)."""
    if isinstance(v, float):
        if v != v:  # NaN: not measured
            return "-"
        a = abs(v)
        if a >= 1000:
            return f"{v:,.0f}"
        if a >= 100:
            return f"{v:.0f}"
        if a >= 10:
            return f"{v:.1f}"
        if a >= 0.01 or a == 0:
            return f"{v:.2f}"
        return f"{v:.1e}"
    return str(v)


def write_section(path: Path, key: str, body: str) -> None:
    """Replace (or append) the section between this key's markers; text outside markers is kept."""
    start, end = f"<!-- bench:{key}:start -->", f"<!-- bench:{key}:end -->"
    block = f"{start}\n{body}\n{end}"
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in old and end in old:
        new = old[:old.index(start)] + block + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
