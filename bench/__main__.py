"""``python -m bench [--quick]``: every scenario, baseline right before hubbub, medians of N runs.

Writes bench/results/latest.json (or quick.json) and bench/results/latency.png (or
quick-latency.png) and prints the table. The generator pins itself to core 1 and
each server to core 0.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.scenarios import MEMORY_TRANSPORTS, QUICK, Plan
from bench.servers import BASELINE, HUBBUB, ROOT

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    from importlib.metadata import version

    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "load_avg": os.getloadavg(),
            "hypercorn": version("hypercorn"), "quart": version("quart"),
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty_files": len(git("status", "--porcelain", "--", "app").splitlines())}


def machine_busy_pct(seconds: float = 1.0) -> float:
    """How busy all cores are (whoever uses them), in % of the machine, over ``seconds``."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields), idle

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return float("nan")
    return round(100 * (1 - (idle1 - idle0) / max(total1 - total0, 1)), 1)


def prepare(plan: Plan) -> Plan:
    """Pins the generator to core 1 (server: core 0) and raises the open-files limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * plan.idle_subscribers + 2 * plan.subscribers + 1024
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) >= 2:
        os.sched_setaffinity(0, {cores[1]})
        return plan.__class__(**{**plan.__dict__, "server_core": cores[0]})
    print("warning: fewer than 2 cores: server and generator share one", file=sys.stderr)
    return plan.__class__(**{**plan.__dict__, "server_core": None})


def _add(results: dict[str, Any], scenario: str, transport: str, server: str, run: Any) -> None:
    results.setdefault(scenario, {}).setdefault(transport, {}).setdefault(server, []).append(run)


async def bench(plan: Plan, log_dir: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    hints: dict[tuple[str, str], float] = {}
    start = time.monotonic()
    last_run_s = 0.0
    for run in range(plan.runs):
        if run and time.monotonic() - start + last_run_s > plan.budget_s:
            print(f"  (time budget: stopping after {run} runs)", flush=True)
            break
        run_start = time.monotonic()
        for transport in plan.transports:
            main: dict[str, dict[str, Any]] = {}
            for spec in (BASELINE, HUBBUB):
                print(f"run {run + 1}/{plan.runs} {transport:>3} {spec.name:<8} main", flush=True)
                hint = hints.get((spec.name, transport))
                began = time.monotonic()
                main[spec.name] = out = await scenarios.main_life(spec, transport, plan, log_dir, hint)
                out["connect"]["life_s"] = round(time.monotonic() - began, 1)
                hints.setdefault((spec.name, transport), out["sustainable"]["rate"] or plan.first_rate)
                out["latency"] = report.latency_summary(out["latency"])
                for scenario, value in out.items():
                    _add(results, scenario, transport, spec.name, value)
                _progress(spec.name, out)
            for spec in (BASELINE, HUBBUB):
                print(f"run {run + 1}/{plan.runs} {transport:>3} {spec.name:<8} slow", flush=True)
                normal = main[spec.name]["sustainable"]
                began = time.monotonic()
                slow = await scenarios.slow_life(spec, transport, plan, log_dir,
                                                 normal["rate"] or plan.first_rate)
                slow["life_s"] = round(time.monotonic() - began, 1)
                base = normal["deliveries_per_s"]
                slow["share_pct"] = round(100 * slow["deliveries_per_s"] / base, 1) if base else None
                _add(results, "slow", transport, spec.name, slow)
                share = "-" if slow["share_pct"] is None else f"{slow['share_pct']}%"
                print(f"    [{slow['life_s']} s] slow: {slow['deliveries_per_s']:,} deliv/s "
                      f"({share} of sustainable; {slow['stalled_closed_by_server']} of "
                      f"{slow['stalled']} stalled closed by the server)", flush=True)
        for transport in MEMORY_TRANSPORTS:
            for spec in (BASELINE, HUBBUB):
                print(f"run {run + 1}/{plan.runs} {transport:>3} {spec.name:<8} memory", flush=True)
                began = time.monotonic()
                mem = await scenarios.memory_life(spec, transport, plan, log_dir)
                mem["life_s"] = round(time.monotonic() - began, 1)
                _add(results, "memory", transport, spec.name, mem)
                print(f"    [{mem['life_s']} s] {mem['kb_per_connection']} KB per idle connection "
                      f"({mem['connections']} connected in {mem['connect_s']} s)", flush=True)
        last_run_s = time.monotonic() - run_start
    results["scale_out"] = await scenarios.scale_out(plan, log_dir)
    return results


def _progress(name: str, out: dict[str, Any]) -> None:
    lat, sus, sat = out["latency"], out["sustainable"], out["saturation"]
    print(f"    [{out['connect']['life_s']} s] connect {out['connect']['seconds']} s | "
          f"p50 {lat['p50_ms']} p99 {lat['p99_ms']} "
          f"max {lat['max_ms']} ms | sustainable {sus['deliveries_per_s']:,}/s "
          f"({len(sus['probes'])} probes) | saturation {sat['deliveries_per_s']:,}/s "
          f"lost {sat['lost_pct']}% | CPU: generator {sat['generator_cpu_pct']}% "
          f"server {sat['server_cpu_pct']}% (+{sat['server_waited_pct']}% waiting)", flush=True)


def _extra(data: dict[str, Any]) -> list[str]:
    return [f"| scale-out, 2 vs 1 worker | - | × | {data['scale_out'].get('status', '')} | | | ≥1.7× |"]


def generator_share(results: dict[str, Any]) -> dict[str, Any]:
    """The generator's CPU next to the server's, where the server works hardest."""
    out: dict[str, Any] = {}
    for scenario in ("saturation", "sustainable", "latency"):
        gen, srv = [], []
        for per_server in results.get(scenario, {}).values():
            for runs in per_server.values():
                gen += [r["generator_cpu_pct"] for r in runs]
                srv += [r["server_cpu_pct"] for r in runs]
        if gen:
            out[scenario] = {"generator_cpu_pct": report.spread(gen),
                             "server_cpu_pct": report.spread(srv)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="regression guard: 200 subscribers, 1 run, short phases (< 2 min)")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 3, quick 1)")
    parser.add_argument("--table", action="store_true",
                        help="print the table of the last results (latest.json, or quick.json "
                             "with --quick) without running anything")
    args = parser.parse_args()
    if args.table:
        import json

        data = json.loads((RESULTS / ("quick.json" if args.quick else "latest.json")).read_text())
        print(report.table(data["summary"], _extra(data)))
        return 0
    plan = QUICK if args.quick else Plan()
    if args.runs:
        plan = plan.__class__(**{**plan.__dict__, "runs": args.runs})
    plan = prepare(plan)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "mode": "quick" if plan.quick
            else "full", "plan": plan.__dict__, **machine(), "busy_before_pct": machine_busy_pct()}
    print(f"bench ({meta['mode']}): {plan.subscribers} subscribers, {plan.runs} run(s); "
          f"{meta['cpu']}, {meta['cores']} cores; before starting, other work kept the machine "
          f"{meta['busy_before_pct']}% busy", flush=True)
    if meta["busy_before_pct"] > 15:
        print("warning: the machine is busy: expect noisy figures (see the 'waited for CPU' rows)",
              flush=True)
    started, cpu0 = time.monotonic(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-") as tmp:
        try:
            results = asyncio.run(bench(plan, Path(tmp)))
        except Exception:
            for log in sorted(Path(tmp).glob("*.log"))[-2:]:
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
    wall = time.monotonic() - started
    meta["wall_s"] = round(wall, 1)
    meta["generator_cpu_pct_overall"] = round(100 * (time.process_time() - cpu0) / wall, 1)
    meta["load_avg_after"] = os.getloadavg()
    meta["busy_after_pct"] = machine_busy_pct()
    versions = sorted({run["code"] for per_t in results.get("connect", {}).values()
                       for runs in per_t.values() for run in runs if "code" in run}
                      | {run["code"] for scenario in ("slow", "memory")
                         for per_t in results.get(scenario, {}).values()
                         for runs in per_t.values() for run in runs if "code" in run})
    meta["code_versions"] = versions
    summary = report.summarize(results)
    share = generator_share(results)
    prefix = "quick-" if plan.quick else ""
    data = {"meta": meta, "summary": summary, "generator": share,
            "scale_out": results.pop("scale_out"), "runs": results}
    report.write_json(RESULTS / f"{'quick' if plan.quick else 'latest'}.json", data)
    report.plot_latency(RESULTS / f"{prefix}latency.png", results,
                        f"hubbub vs naive baseline, {plan.subscribers} subscribers, "
                        f"{plan.latency_deliveries_per_s:,} deliveries/s ({meta['date']})")
    sat = share.get("saturation", {})
    print()
    print(report.table(summary, _extra(data)))
    gen, srv = sat.get("generator_cpu_pct") or {}, sat.get("server_cpu_pct") or {}
    print(f"\ngenerator CPU at saturation: median {gen.get('median', 0):.0f}% of its core "
          f"[{gen.get('min', 0):.0f}–{gen.get('max', 0):.0f}] while the server used "
          f"{srv.get('median', 0):.0f}% of its own; whole run: generator "
          f"{meta['generator_cpu_pct_overall']}% over {meta['wall_s']} s")
    if len(versions) > 1:
        print(f"warning: the code changed during the run ({', '.join(versions)}): runs measured "
              "different versions", flush=True)
    capped = [f"{scenario} {t}/{s}" for scenario in ("sustainable", "slow")
              for t, per in results.get(scenario, {}).items()
              for s, runs in per.items() if any(r.get("capped") for r in runs)]
    if capped:
        print(f"note: the sustainable search never failed for {', '.join(capped)} in some run: "
              "those figures are lower bounds", flush=True)
    if gen.get("max", 0) > 80:
        print("warning: the generator neared a full core at saturation: hubbub's figure may be "
              "capped by the generator", flush=True)
    print(f"wrote {RESULTS / ('quick.json' if plan.quick else 'latest.json')} and "
          f"{RESULTS / (prefix + 'latency.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
