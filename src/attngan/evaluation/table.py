"""The result of :func:`~attngan.evaluation.model.evaluate_model` as a text table: one row per figure (with
its sample count), then the protocol of each, numbered, and the protocol of the generated images."""

from __future__ import annotations

from typing import Any

from ..metrics.attributes import ATTRIBUTES

__all__ = ["PAPER_MISMATCHES", "PAPER_SPLITS", "protocol_changes", "format_table"]

_LABELS = {
    "r_precision": "R-precision (%)",
    "is": "Inception score",
    "fid": "FID",
    "attributes": "attributes: all correct",
    "attention_grounding": "attention grounding",
    "clip": "CLIP score",
}


PAPER_MISMATCHES = 99  # R-precision: mismatching captions per image in the paper (Sec. 4)
PAPER_SPLITS = 10  # R-precision and Inception score: splits in the paper


def protocol_changes(name: str, res: dict[str, Any]) -> list[str]:
    """How ``res`` was measured unlike the paper, in words (fewer mismatches or splits than it used)."""
    changes = []
    mismatches = res.get("n_mismatch")
    if name == "r_precision" and mismatches is not None and mismatches != PAPER_MISMATCHES:
        changes.append(
            f"{mismatches} mismatches: not comparable with the paper's {PAPER_MISMATCHES}"
            f" (chance {100 / (1 + mismatches):.1f}% instead of {100 / (1 + PAPER_MISMATCHES):.0f}%)"
        )
    splits = res.get("splits")
    if name in ("r_precision", "is") and splits is not None and splits != PAPER_SPLITS:
        changes.append(f"{splits} splits instead of the paper's {PAPER_SPLITS}")
    return changes


def _rows(name: str, res: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(label, value, sample count) rows of one metric result."""

    def pm(mean: Any, std: Any, digits: int = 2) -> str:
        if mean is None:
            return "n/a"
        return f"{mean:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{mean:.{digits}f}"

    n = int(res.get("n") or 0)
    if "skipped" in res:
        return [(_LABELS[name], "failed" if res.get("failed") else "skipped", n)]
    if name == "r_precision":
        label = _LABELS[name] + (", other classes" if res.get("exclude_same_class") else "")
        return [(label, pm(res["r_precision"], res["r_precision_std"]), n)]
    if name == "is":
        return [(_LABELS[name], pm(res["is_mean"], res["is_std"]), n)]
    if name == "fid":
        variant = " (torchvision-imagenet, not standard)" if res["protocol"].startswith("NOT") else ""
        return [(_LABELS[name] + variant, pm(res["fid"], None), n)]
    if name == "attributes":
        chance, counts = res.get("chance", {}), res.get("n_per_attribute", {})
        rows = [(_LABELS[name], pm(res["all_acc"], None, 3), n)]
        real = res.get("real_reference")
        if real:
            rows.append(
                ("attributes: all correct, real test images", pm(real["all_acc"], None, 3), real["n"])
            )
        for attr in ATTRIBUTES:
            label = f"attributes: {attr} (chance {chance.get(attr, 0):.3f})"
            rows.append((label, pm(res.get(f"{attr}_acc"), None, 3), int(counts.get(attr, n))))
        return rows
    if name == "attention_grounding":
        label = f"{_LABELS[name]} (chance {res['chance']:.3f})" if res.get("chance") is not None else _LABELS[name]
        return [(label, pm(res["attention_grounding"], None, 3), n)]
    return [(_LABELS[name], pm(res["clip_score"], res.get("clip_score_std")), n)]


def format_table(result: dict[str, Any]) -> str:
    """The result of :func:`evaluate_model` as a text table; each row refers to its protocol below."""
    lines = [f"{'metric':<44}{'value':>18}{'n':>8}  protocol"]
    notes: list[str] = []
    for name, res in result["metrics"].items():
        why = (" -- " if res.get("failed") else " -- skipped: ") + str(res.get("skipped"))
        notes.append(res["protocol"] + (why if "skipped" in res else ""))
        changes = "" if "skipped" in res else "; ".join(protocol_changes(name, res))
        for k, (label, value, n) in enumerate(_rows(name, res)):
            remark = f"  {changes}" if changes and k == 0 else ""
            lines.append(f"{label:<44}{value:>18}{n:>8}  [{len(notes)}]{remark}")
    lines.append("")
    lines.append(f"images: {result['protocol']}")
    lines += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(lines)
