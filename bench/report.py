"""Medians with min–max, hubbub's ratios (× naive, × Node), the terminal table, the JSON and the PNG."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

# The order of the columns: the naive baseline, the Node reference (bench/node), hubbub.
SERVERS = ("baseline", "node", "hubbub")
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
    # Latency at 20k deliv/s, two measures (bench/README.md): at arrival, the kernel's
    # receive timestamp (what a client on its own machine sees; the target applies there);
    # when read, which adds the generator's serial reading of all its sockets.
    ("latency", "arrival_p50_ms", "latency p50 at arrival (kernel timestamp)", "ms", {}),
    ("latency", "arrival_p99_ms", "latency p99 at arrival (kernel timestamp)", "ms",
     {"*": ("<=", 20.0)}),
    ("latency", "arrival_max_ms", "latency max at arrival (kernel timestamp)", "ms", {}),
    ("latency", "p50_ms", "latency p50 when read (generator)", "ms", {}),
    ("latency", "p99_ms", "latency p99 when read (generator)", "ms", {}),
    ("latency", "max_ms", "latency max when read (generator)", "ms", {}),
    ("latency", "server_waited_pct", "  server waited for CPU", "%", {}),
    ("latency", "generator_waited_pct", "  generator waited for CPU", "%", {}),
    ("memory", "kb_per_connection", "memory per idle conn", "KB", {"*": ("<=", 20.0)}),
    # Crowded rooms: 1,000 distinct users into one room within 1.5× Node's time (and never
    # slower than naive: the × naive column).
    ("connect", "seconds", "connect all, authenticated", "s", {"*": ("node<=", 1.5)}),
    ("slow", "deliveries_per_s", "sustainable, 10% stalled", "deliv/s", {}),
    ("slow", "without_per_s", "  same life, the stalled gone", "deliv/s", {}),
    ("slow", "share_pct", "  share: with / without", "%", {"*": (">=", 90.0)}),
]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def _quantiles(samples: list[float], prefix: str) -> dict[str, Any]:
    samples = sorted(samples)
    return {f"{prefix}p50_ms": round(percentile(samples, 0.5), 2),
            f"{prefix}p99_ms": round(percentile(samples, 0.99), 2),
            f"{prefix}max_ms": round(samples[-1], 2) if samples else None,
            f"{prefix}curve": [[q, round(percentile(samples, q), 3)] for q in QUANTILES]}


def latency_summary(run: dict[str, Any]) -> dict[str, Any]:
    """Replaces the raw samples of a latency run by percentiles and a quantile curve.

    ``p50_ms``, ``p99_ms``, ``max_ms``, ``curve``: read latency (the generator parsed the
    message); ``arrival_p50_ms``, ``arrival_p99_ms``, ``arrival_max_ms``, ``arrival_curve``:
    arrival latency (the kernel's receive timestamp). See ``Session.latency``.
    """
    samples = run.pop("samples")
    arrival = run.pop("arrival_samples", None)
    run["deliveries"] = len(samples)
    run.update(_quantiles(samples, ""))
    if arrival is not None:
        run.update(_quantiles(arrival, "arrival_"))
    return run


def spread(values: list[float]) -> dict[str, float] | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": len(values)}


def _ratio(stats: dict[str, dict[str, float] | None], other: str) -> float | None:
    """hubbub's median over ``other``'s, or None."""
    hub, ref = stats.get("hubbub"), stats.get(other)
    if not hub or not ref or not ref["median"]:
        return None
    return round(hub["median"] / ref["median"], 3)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """results[scenario][transport][server] = [run, ...] → medians, min–max and ratios.

    ``ratio``: hubbub over the naive baseline; ``ratio_node``: hubbub over the Node reference.
    """
    summary: dict[str, Any] = {}
    for scenario, metric, _, _, _ in ROWS:
        for transport, per_server in results.get(scenario, {}).items():
            cell = summary.setdefault(scenario, {}).setdefault(transport, {})
            stats = {s: spread([r.get(metric) for r in per_server.get(s, [])]) for s in SERVERS}
            cell[metric] = {**stats, "ratio": _ratio(stats, "baseline"),
                            "ratio_node": _ratio(stats, "node")}
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
    if kind == "node<=":
        if entry.get("ratio_node") is None:
            return f"≤{value:g}× Node: no Node run"
        return f"≤{value:g}× Node {'ok' if entry['ratio_node'] <= value else 'MISS'}"
    ok = hub <= value if kind == "<=" else hub >= value
    return f"{kind}{value:g} {'ok' if ok else 'MISS'}"


def _widen(row: str) -> str:
    """An extra row in the seven-column form (label, transport, unit, baseline, hubbub, ratio,
    target) gets empty Node and × Node cells, so it lines up with the table's nine."""
    cells = row.split("|")
    if len(cells) != 9:  # '' + 7 cells + ''
        return row
    return "|".join([*cells[:5], " ", *cells[5:7], " ", *cells[7:]])


def table(summary: dict[str, Any], extra: list[str] | None = None) -> str:
    """Markdown-compatible, readable on a terminal. hubbub's ratio to the naive baseline
    (× naive) and to the Node reference (× Node); a results file without Node shows ``-``."""
    lines = ["| scenario | transport | unit | baseline median [min–max] | Node median [min–max] "
             "| hubbub median [min–max] | hubbub × naive | hubbub × Node | target |",
             "|---|---|---|---|---|---|---|---|---|"]
    for scenario, metric, label, unit, targets in ROWS:
        for transport, cell in summary.get(scenario, {}).items():
            entry = cell.get(metric)
            if not entry:
                continue
            ratios = ["-" if entry.get(key) is None else f"{entry[key]:.2f}×"
                      for key in ("ratio", "ratio_node")]
            target = targets.get(transport) or targets.get("*")
            lines.append(f"| {label} | {transport} | {unit} | {spread_cell(entry['baseline'])} "
                         f"| {spread_cell(entry.get('node'))} | {spread_cell(entry['hubbub'])} "
                         f"| {ratios[0]} | {ratios[1]} | {_target(target, entry)} |")
    for line in extra or []:
        lines.append(_widen(line))
    return "\n".join(lines)


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")


def plot_latency(path: Path, results: dict[str, Any], title: str) -> None:
    """Latency by percentile (HDR style), one panel per transport, every run a line.

    Solid: at arrival (the kernel's receive timestamp); dashed: when the generator read it.
    """
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    transports = list(results.get("latency", {}))
    if not transports:
        return
    fig, axes = plt.subplots(1, len(transports), figsize=(5 * len(transports), 4.4), sharey=True,
                             squeeze=False)
    colors = {"baseline": "tab:gray", "node": "tab:green", "hubbub": "tab:blue"}
    styles = (("arrival_curve", "-", "at arrival (kernel timestamp)"),
              ("curve", "--", "when read (generator)"))
    ticks = [0.5, 0.9, 0.99, 0.999, 0.9999]
    for ax, transport in zip(axes[0], transports, strict=True):
        for server in SERVERS:
            for run in results["latency"][transport].get(server, []):
                for key, style, _ in styles:
                    points = [(q, v) for q, v in run.get(key, []) if q < 1.0]
                    xs = [-math.log10(1 - q) for q, _ in points]
                    ys = [max(v, 0.01) for _, v in points]
                    ax.plot(xs, ys, color=colors[server], ls=style, alpha=0.8, lw=1.4)
        ax.set_xticks([-math.log10(1 - q) for q in ticks],
                      [f"p{q * 100:g}" for q in ticks])
        ax.set_yscale("log")
        ax.axhline(20, color="tab:red", ls=":", lw=1.0)
        ax.set_title(transport)
        ax.set_xlabel("percentile")
        ax.grid(True, which="both", alpha=0.3)
        handles = ([Line2D([], [], color=colors[s], lw=1.4, label=s) for s in SERVERS
                    if results["latency"][transport].get(s)]
                   + [Line2D([], [], color="black", ls=style, lw=1.4, label=label)
                      for _, style, label in styles]
                   + [Line2D([], [], color="tab:red", ls=":", lw=1.0,
                             label="target: p99 at arrival ≤ 20 ms")])
        ax.legend(handles=handles, loc="lower right", fontsize=7)
    axes[0][0].set_ylabel("end-to-end latency (ms, log)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
