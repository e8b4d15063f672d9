"""Medians with min–max, the hubbub/baseline ratios, the terminal table, the JSON and the PNG."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

SERVERS = ("baseline", "hubbub")
# Quantiles kept per latency run (the raw samples are not stored): fine at the tail.
QUANTILES = ([i / 100 for i in range(0, 90, 5)] + [i / 100 for i in range(90, 99)]
             + [0.99 + i / 1000 for i in range(10)] + [0.999, 0.9995, 0.9999, 1.0])

# (scenario, metric key, label, unit, target for hubbub: (kind, value) or None)
Row = tuple[str, str, str, str, dict[str, tuple[str, float]]]
ROWS: list[Row] = [
    ("saturation", "deliveries_per_s", "saturation", "deliv/s",
     {"sse": ("ratio>=", 4.0), "ws": ("ratio>=", 3.0)}),
    ("saturation", "deliveries_per_cpu_s", "  per server CPU-second", "deliv", {}),
    ("saturation", "lost_pct", "  lost or late", "%", {}),
    ("saturation", "server_waited_pct", "  server waited for CPU", "%", {}),
    ("sustainable", "deliveries_per_s", "sustainable (age<=0.5s)", "deliv/s", {}),
    ("latency", "p50_ms", "latency p50 at 20k deliv/s", "ms", {}),
    ("latency", "p99_ms", "latency p99 at 20k deliv/s", "ms", {"*": ("<=", 20.0)}),
    ("latency", "max_ms", "latency max at 20k deliv/s", "ms", {}),
    ("latency", "server_waited_pct", "  server waited for CPU", "%", {}),
    ("latency", "generator_waited_pct", "  generator waited for CPU", "%", {}),
    ("memory", "kb_per_connection", "memory per idle conn", "KB", {"*": ("<=", 20.0)}),
    ("connect", "seconds", "connect all, authenticated", "s", {"*": ("<=", 0.5)}),
    ("slow", "deliveries_per_s", "sustainable, 10% stalled", "deliv/s", {}),
    ("slow", "share_pct", "  share of sustainable", "%", {"*": (">=", 90.0)}),
]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def latency_summary(run: dict[str, Any]) -> dict[str, Any]:
    """Replaces the raw samples of a latency run by percentiles and a quantile curve."""
    samples = sorted(run.pop("samples"))
    run.update({"deliveries": len(samples),
                "p50_ms": round(percentile(samples, 0.5), 2),
                "p99_ms": round(percentile(samples, 0.99), 2),
                "max_ms": round(samples[-1], 2) if samples else None,
                "curve": [[q, round(percentile(samples, q), 3)] for q in QUANTILES]})
    return run


def spread(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """results[scenario][transport][server] = [run, ...] → medians, min–max and ratios."""
    summary: dict[str, Any] = {}
    for scenario, metric, _, _, _ in ROWS:
        for transport, per_server in results.get(scenario, {}).items():
            cell = summary.setdefault(scenario, {}).setdefault(transport, {})
            stats = {s: spread([r.get(metric) for r in per_server.get(s, [])]) for s in SERVERS}
            ratio = None
            if stats["baseline"] and stats["hubbub"] and stats["baseline"]["median"]:
                ratio = stats["hubbub"]["median"] / stats["baseline"]["median"]
            cell[metric] = {**stats, "ratio": None if ratio is None else round(ratio, 3)}
    return summary


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def spread_cell(stats: dict[str, float] | None) -> str:
    """``median [min–max]`` (just the value for one run), or ``-``."""
    if not stats:
        return "-"
    if stats["runs"] == 1:
        return _fmt(stats["median"])
    return f"{_fmt(stats['median'])} [{_fmt(stats['min'])}–{_fmt(stats['max'])}]"


def _target(target: tuple[str, float] | None, entry: dict[str, Any]) -> str:
    if target is None or not entry.get("hubbub"):
        return ""
    kind, value = target
    hub = entry["hubbub"]["median"]
    if kind == "ratio>=":
        ok = entry["ratio"] is not None and entry["ratio"] >= value
        return f"≥{value:g}× {'ok' if ok else 'MISS'}"
    ok = hub <= value if kind == "<=" else hub >= value
    return f"{kind}{value:g} {'ok' if ok else 'MISS'}"


def table(summary: dict[str, Any], extra: list[str] | None = None) -> str:
    """Markdown-compatible, readable on a terminal."""
    lines = ["| scenario | transport | unit | baseline median [min–max] | hubbub median [min–max] "
             "| hubbub/baseline | target |", "|---|---|---|---|---|---|---|"]
    for scenario, metric, label, unit, targets in ROWS:
        for transport, cell in summary.get(scenario, {}).items():
            entry = cell.get(metric)
            if not entry:
                continue
            ratio = "-" if entry["ratio"] is None else f"{entry['ratio']:.2f}×"
            target = targets.get(transport) or targets.get("*")
            lines.append(f"| {label} | {transport} | {unit} | {spread_cell(entry['baseline'])} "
                         f"| {spread_cell(entry['hubbub'])} | {ratio} | {_target(target, entry)} |")
    for line in extra or []:
        lines.append(line)
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def plot_latency(path: Path, results: dict[str, Any], title: str) -> None:
    """Latency by percentile (HDR style), one panel per transport, every run a line."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    transports = list(results.get("latency", {}))
    if not transports:
        return
    fig, axes = plt.subplots(1, len(transports), figsize=(5 * len(transports), 4.2), sharey=True,
                             squeeze=False)
    colors = {"baseline": "tab:gray", "hubbub": "tab:blue"}
    ticks = [0.5, 0.9, 0.99, 0.999, 0.9999]
    for ax, transport in zip(axes[0], transports, strict=True):
        for server in SERVERS:
            for i, run in enumerate(results["latency"][transport].get(server, [])):
                points = [(q, v) for q, v in run.get("curve", []) if q < 1.0]
                xs = [-math.log10(1 - q) for q, _ in points]
                ys = [max(v, 0.01) for _, v in points]
                ax.plot(xs, ys, color=colors[server], alpha=0.8, lw=1.4,
                        label=server if i == 0 else None)
        ax.set_xticks([-math.log10(1 - q) for q in ticks],
                      [f"p{q * 100:g}" for q in ticks])
        ax.set_yscale("log")
        ax.axhline(20, color="tab:red", ls="--", lw=0.8, label="target p99 ≤ 20 ms")
        ax.set_title(transport)
        ax.set_xlabel("percentile")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
    axes[0][0].set_ylabel("end-to-end latency (ms, log)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
