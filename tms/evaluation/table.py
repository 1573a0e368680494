"""Plain-text tables of results (the summary ``python train.py`` prints)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A fixed-width text table."""
    cells = [list(map(str, headers))] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary_table(rows: Mapping[str, Mapping[str, Any]], retention: Sequence[str], target: str) -> str:
    """Model rows × (target score, each retention skill, F, S_xfer, KL on retention prompts in both directions).

    ``KL_ret/seq`` = KL(π ‖ π_0) (``kl_to_base``, samples of the model), ``fwdKL_ret/seq`` = KL(π_0 ‖ π)
    (``kl_from_base``, samples of θ0), nats per sequence; ``-`` where a result predates the key.
    """
    headers = ["model", f"target ({target})", *retention, "F", "xfer", "KL_ret/seq", "fwdKL_ret/seq"]
    body = []
    for name, r in rows.items():
        kl, fwd = ((r.get(key) or {}).get("retention") or {} for key in ("kl_to_base", "kl_from_base"))
        body.append([name, r.get("target"), *[r["scores"].get(b) for b in retention], r.get("forgetting"),
                     r.get("xfer"), kl.get("kl_seq"), fwd.get("kl_seq")])
    return render(headers, body)
