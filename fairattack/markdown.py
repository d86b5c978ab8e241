"""The one Markdown table writer of the reports (`fairattack report`, `compare`, the leaderboard)."""


def cell(value):
    """A value as table text: floats to 3 decimals, '|' escaped."""
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def table(header, rows):
    """The lines of a GitHub Markdown table: a header row, its rule and one line per row."""
    header = list(header)
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines
