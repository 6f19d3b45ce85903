"""Plain-text layout shared by every table the project prints."""

from __future__ import annotations

#: How many codebook values tables, reprs and error messages show before "...".
SHOWN_VALUES = 8


def format_values(values, limit: int = SHOWN_VALUES) -> str:
    """A codebook as `{v0, v1, ...}`, at most `limit` values shown.

    Example:

    >>> format_values([-1.0, -0.5, 0.5, 1.0])
    '{-1, -0.5, 0.5, 1}'
    >>> format_values(range(9))
    '{0, 1, 2, 3, 4, 5, 6, 7, ...}'
    >>> format_values(range(8), limit=3)
    '{0, 1, 2, ...}'
    """
    shown = ", ".join(f"{v:g}" for v in list(values)[:limit])
    return "{" + shown + (", ..." if len(values) > limit else "") + "}"


def table_lines(rows) -> list[str]:
    """Each row as one line, columns padded to their widest cell, two spaces apart.

    Example:

    >>> table_lines([("a", "bb"), ("ccc", "d")])
    ['a    bb', 'ccc  d']
    """
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]


def table(rows) -> str:
    """The first row as a header, a rule of dashes under it, then the other rows.

    Example:

    >>> print(table([("name", "n"), ("x", "1")]))
    name  n
    -------
    x     1
    """
    lines = table_lines(rows)
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
