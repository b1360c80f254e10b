"""The plots of report.html (PNG, base64), drawn with matplotlib's Agg backend.

Readable at a glance: figures about 10 inches wide at 110 dpi with 11-point text; accuracy in
percent like every table; a latency axis is linear when its values span less than a factor of
8 and logarithmic otherwise, with ticks at 1-2-5 multiples labelled as plain numbers (matplotlib's
default labels every minor tick of a short log axis in scientific notation, and they overlap).
matplotlib is imported inside the functions: it is the optional ``report`` extra.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

Samples = Mapping[str, Mapping[str, list[float]]]  # target -> {"student"|"teacher": [ms, ...]}

#: Width of every plot in inches; heights follow the content.
WIDTH_IN = 10.0
_STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.labelsize": 11, "legend.fontsize": 10,
          "xtick.labelsize": 10, "ytick.labelsize": 10}
#: Above this max/min ratio a latency or size axis is logarithmic.
LOG_RATIO = 8.0


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _plain(value: float, _pos: Any = None) -> str:
    """A tick label without scientific notation: 0.05, 0.2, 1, 20, 1,500."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:g}" if value >= 0.001 else f"{value:.1e}"


def scale_axis(ax: Any, values: Sequence[float], axis: str = "x") -> str:
    """Make ``ax``'s x or y axis fit ``values``: ``"linear"`` for a small range, else ``"log"``
    with 1-2-5 major ticks in plain numbers and unlabelled minor ticks (returns the scale)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in values if v is not None and v > 0]
    target = ax.xaxis if axis == "x" else ax.yaxis
    if not positive or max(positive) / min(positive) < LOG_RATIO:
        return "linear"  # matplotlib's linear ticks are plain and do not collide
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    decades = max(positive) / min(positive)
    subs = (1.0, 2.0, 5.0) if decades < 1e4 else (1.0,)
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(FuncFormatter(_plain))
    target.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10))))
    target.set_minor_formatter(NullFormatter())
    return "log"


def _ran(report: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [t for t in report.get("targets") or [] if t.get("status") == "ok"]


def plot_accuracy_vs_latency(report: Mapping[str, Any]) -> str | None:
    """Accuracy vs p50 latency per target (filled) with the teacher on the same engine (hollow),
    joined by a line: up and to the left of the teacher is the goal."""
    import matplotlib.pyplot as plt

    points = [t for t in _ran(report) if t.get("accuracy") is not None]
    if not points:
        return None
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 5.5))
        xs = []
        for i, t in enumerate(points):
            color = f"C{i % 10}"
            x, y = t["latency_ms"]["p50"], 100 * t["accuracy"]
            xs.append(x)
            ax.scatter([x], [y], color=color, s=80, zorder=3, label=f"{t['name']} (student)")
            tlat, tacc = (t.get("teacher_latency_ms") or {}).get("p50"), t.get("teacher_accuracy")
            if tlat is not None and tacc is not None:
                xs.append(tlat)
                ax.scatter([tlat], [100 * tacc], facecolors="none", edgecolors=color, s=100,
                           linewidths=2, zorder=3, label=f"{t['name']} (teacher)")
                ax.plot([x, tlat], [y, 100 * tacc], color=color, linestyle=":", linewidth=1)
        teacher = report.get("teacher") or {}
        if teacher.get("accuracy") is not None:
            ax.axhline(100 * teacher["accuracy"], color="gray", linestyle="--", linewidth=1,
                       label="teacher (PyTorch)")
        scale = scale_axis(ax, xs, "x")
        ax.set_xlabel(f"p50 latency (ms{', log scale' if scale == 'log' else ''})")
        ax.set_ylabel("test accuracy (%)")
        ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.1f}")
        ax.set_title("Accuracy vs latency per target")
        ax.grid(True, which="major", alpha=0.35)
        ax.grid(True, which="minor", alpha=0.12)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _png(fig)


def size_bars(report: Mapping[str, Any]) -> list[tuple[str, float, str]]:
    """(label, KiB, role) bars: the teacher once (its FP32 ONNX, or the first teacher engine of
    a report without a teacher block), then every target's student engine."""
    bars: list[tuple[str, float, str]] = []
    teacher = report.get("teacher") or {}
    if teacher.get("size_bytes") is not None:
        bars.append(("teacher (FP32 ONNX)", teacher["size_bytes"] / 1024, "teacher"))
    else:
        first = next((t for t in _ran(report) if t.get("teacher_size_bytes") is not None), None)
        if first is not None:
            bars.append((f"teacher ({first.get('backend')} {first.get('precision') or ''})"
                         .replace(" )", ")"), first["teacher_size_bytes"] / 1024, "teacher"))
    for t in _ran(report):
        if t.get("size_bytes") is not None:
            bars.append((f"{t['name']} ({t.get('backend')} {t.get('precision')})",
                         t["size_bytes"] / 1024, str(t.get("precision"))))
    return bars


def plot_sizes(report: Mapping[str, Any]) -> str | None:
    """Artifact size per target engine, with the teacher shown once for reference."""
    import matplotlib.pyplot as plt

    bars = size_bars(report)
    if not bars:
        return None
    colors = {"teacher": "C7", "int8": "C2", "fp32": "C0", "fp16": "C1"}
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 0.55 * len(bars) + 1.6))
        ys = range(len(bars))[::-1]  # first bar (the teacher) on top
        sizes = [b[1] for b in bars]
        drawn = ax.barh(list(ys), sizes, color=[colors.get(b[2], "C4") for b in bars])
        teacher_kib = bars[0][1] if bars[0][2] == "teacher" else None
        labels = [f"{s:,.1f} KiB" + (f" (1/{teacher_kib / s:.1f} of the teacher)"
                                     if teacher_kib and i and s > 0 else "")
                  for i, s in enumerate(sizes)]
        ax.bar_label(drawn, labels=labels, padding=4)
        ax.set_yticks(list(ys), [b[0] for b in bars])
        scale = scale_axis(ax, sizes, "x")
        if scale == "log":
            ax.set_xlim(min(sizes) / 1.5, max(sizes) * 5)  # room for the value labels
        else:
            ax.set_xlim(0, max(sizes) * 1.45)
        ax.set_xlabel(f"artifact size (KiB{', log scale' if scale == 'log' else ''})")
        ax.set_title("Size per artifact")
        ax.grid(True, axis="x", which="major", alpha=0.3)
        return _png(fig)


def plot_latency_distribution(report: Mapping[str, Any], samples: Samples | None) -> str | None:
    """Box plots of the raw per-call latencies of every engine that was timed."""
    import matplotlib.pyplot as plt

    data, labels = [], []
    for t in _ran(report):
        per = (samples or {}).get(t["name"]) or {}
        for role in ("student", "teacher"):
            if per.get(role):
                data.append(per[role])
                labels.append(f"{t['name']} {role}")
    if not data:
        return None
    data, labels = data[::-1], labels[::-1]  # boxplot draws bottom-up: first target on top
    with plt.rc_context(_STYLE):
        fig, ax = plt.subplots(figsize=(WIDTH_IN, 0.6 * len(data) + 1.8))
        ax.boxplot(data, vert=False, whis=(1, 99), showfliers=True,
                   flierprops={"markersize": 2, "alpha": 0.4})
        ax.set_yticks(range(1, len(data) + 1), labels)
        scale = scale_axis(ax, [v for d in data for v in d], "x")
        ax.set_xlabel(f"latency per call (ms{', log scale' if scale == 'log' else ''}); "
                      "whiskers p1-p99")
        ax.set_title("Latency distribution per engine (raw samples)")
        ax.grid(True, axis="x", which="major", alpha=0.35)
        ax.grid(True, axis="x", which="minor", alpha=0.12)
        return _png(fig)
