"""Cell formatting shared by every report (``bench.report``, ``bench.kernelbench.report``, the progress table).

It lives apart from ``bench.report`` so that ``bench.kernelbench.report`` (which ``bench.report`` imports for its
kernel section) does not import ``bench.report`` back: no import cycle.
"""

from __future__ import annotations

from typing import Any

__all__ = ["fmt_num"]


def fmt_num(v: Any, spec: str) -> str:
    """``v`` formatted with ``spec``; "—" for a missing, NaN or non-numeric cell (a failed config, never a 0)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    return "—" if f != f else format(f, spec)
