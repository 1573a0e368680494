"""How the toy reproduction report writes numbers and names: methods, columns, values and mean ± SE."""
from __future__ import annotations

from tms.repro.analysis import Stat

NAMES = {"base": "θ0 (base)", "sft": "SFT", "self_sft": "Self-SFT", "final_sft": "Final-SFT",
         "reinforce": "REINFORCE", "grpo": "GRPO", "tms": "TMS"}
COLUMN_NAMES = {"target": "target", "retention_mean": "retention mean", "F": "F", "xfer": "S_xfer",
                "kl_fwd_target": "KL(π0‖π) tgt", "kl_rev_target": "KL(π‖π0) tgt",
                "kl_fwd_retention": "KL(π0‖π) ret", "kl_rev_retention": "KL(π‖π0) ret", "pld": "PLD",
                "sc_acc": "SC-Acc", "answer_entropy": "AnsEnt", "student_pld": "student PLD",
                "mean_tokens": "mean tokens", "accuracy": "accuracy"}


def fmt_num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def fmt_stat(s: Stat, digits: int = 3, single: str = " (n=1, no SE)") -> str:
    """``0.512 ± 0.013`` / ``0.512 (n=1, no SE)`` (``single`` appended when one value) / ``–``."""
    if s.mean is None:
        return "–"
    if s.se is None:
        return f"{s.mean:.{digits}f}{single}"
    return f"{s.mean:.{digits}f} ± {s.se:.{digits}f}"


def name(method: str) -> str:
    return NAMES.get(method, method)


def col_name(col: str) -> str:
    return COLUMN_NAMES.get(col, col.replace("share_", "share ").replace("_", " "))
