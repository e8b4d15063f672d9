"""``python -m bench [--quick]``: every scenario, baseline, Node and hubbub in turn, medians of N runs.

Writes bench/results/latest.json (or quick.json) and bench/results/latency.png (or
quick-latency.png) and prints the table. The generator pins itself to core 1 and
each server to core 0. ``--only scale-out`` runs just the scale-out scenario (one vs two
workers on Redis) and writes bench/results/scale-out.json instead; ``--only h2sse`` runs the
main scenario (connect, latency, sustainable, saturation) with SSE over HTTP/2 (h2c, one
connection per subscriber) and writes bench/results/h2sse.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.scenarios import QUICK, Plan
from bench.servers import BASELINE, FLOOR, HUBBUB, NODE, ROOT, node_unavailable

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
            "hypercorn": version("hypercorn"), "quart": version("quart"), **node_versions(),
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty_files": len(git("status", "--porcelain", "--", "app").splitlines())}


def node_versions() -> dict[str, str]:
    """The Node reference's runtime and ws versions ("" where unknown)."""
    import json

    try:
        node = subprocess.run(["node", "--version"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        node = ""
    try:
        ws = json.loads((ROOT / "bench/node/node_modules/ws/package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        ws = ""
    return {"node_version": node, "ws_version": ws}


BUSY_SAMPLE_S = {False: 1.0, True: 0.3}  # quick: five invocations make up make bench-quick


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
    want = 2 * max(plan.idle_subscribers, plan.idle_many) + 2 * plan.subscribers + 1024
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


async def bench(plan: Plan, log_dir: Path, only: str | None = None) -> dict[str, Any]:
    if only == "scale-out":
        return {"scale_out": await scenarios.scale_out(plan, log_dir)}
    if only == "h2sse":
        return await _main_lives(plan, log_dir, "h2sse")
    if only == "idle":
        return await _idle_lives(plan, log_dir)
    results: dict[str, Any] = {}
    hints: dict[tuple[str, str], float] = {}
    start = time.monotonic()
    last_run_s = 0.0
    budget_s = plan.budget_s - (plan.scale_out_budget_s if plan.scale_out_runs != 0 else 0)
    for run in range(plan.runs):
        if run and time.monotonic() - start + last_run_s > budget_s:
            print(f"  (time budget: stopping after {run} runs)", flush=True)
            break
        run_start = time.monotonic()
        once_s = 0.0  # the first run's lives that later runs do not repeat
        for transport in plan.transports:
            main: dict[str, dict[str, Any]] = {}
            for spec in (BASELINE, NODE, HUBBUB):
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
            # The floor's connect: the same subscribers into Hypercorn serving an empty app
            # (~3 s a life), so the connect target reads against what no app on it can beat.
            print(f"run {run + 1}/{plan.runs} {transport:>3} {FLOOR.name:<8} connect", flush=True)
            floor = await scenarios.connect_life(FLOOR, transport, plan, log_dir)
            _add(results, "connect", transport, FLOOR.name, floor)
            print(f"    connect {floor['seconds']} s", flush=True)
            # The slow lives compare hubbub with the naive baseline only (Node, which has no
            # slow-consumer policy, buffers without bound); in the first run only, as the
            # memory lives below, so that three runs of the rest fit in the budget; none in
            # quick mode, to keep all of `make bench-quick` short.
            for spec in () if plan.quick or run else (BASELINE, HUBBUB):
                print(f"run {run + 1}/{plan.runs} {transport:>3} {spec.name:<8} slow", flush=True)
                began = time.monotonic()
                slow = await scenarios.slow_life(spec, transport, plan, log_dir,
                                                 main[spec.name]["sustainable"]["rate"])
                slow["life_s"] = round(time.monotonic() - began, 1)
                once_s += time.monotonic() - began
                _add(results, "slow", transport, spec.name, slow)
                share = "-" if slow["share_pct"] is None else f"{slow['share_pct']}%"
                print(f"    [{slow['life_s']} s] slow: {slow['deliveries_per_s']:,} deliv/s with "
                      f"{slow['stalled']} stalled, {slow['without_per_s']:,} without ({share}); "
                      f"{slow['stalled_closed_by_server']} stalled closed by the server", flush=True)
        # RSS per idle connection barely moves between runs (within 0.2 KB at 5,000): measured
        # in the first run only, the floor with the others, to keep three runs within the budget.
        for transport in () if run else plan.memory_transports:
            for spec in (FLOOR, BASELINE, NODE, HUBBUB):
                print(f"run {run + 1}/{plan.runs} {transport:>3} {spec.name:<8} memory", flush=True)
                began = time.monotonic()
                mem = await scenarios.memory_life(spec, transport, plan, log_dir)
                mem["life_s"] = round(time.monotonic() - began, 1)
                once_s += time.monotonic() - began
                _add(results, "memory", transport, spec.name, mem)
                print(f"    [{mem['life_s']} s] {mem['kb_per_connection']} KB per idle connection "
                      f"({mem['connections']} connected in {mem['connect_s']} s)", flush=True)
        last_run_s = time.monotonic() - run_start - once_s
    if plan.scale_out_runs == 0:
        print("scale-out: skipped in quick mode (python -m bench --only scale-out: ~2.5 min)", flush=True)
        results["scale_out"] = {"status": "skipped in quick mode: python -m bench --only scale-out"}
    else:
        try:
            results["scale_out"] = await scenarios.scale_out(plan, log_dir)
        except Exception as exc:  # the other scenarios' results must still be written
            traceback.print_exc()
            results["scale_out"] = {"status": f"failed: {exc!r}"[:300]}
    return results


async def _main_lives(plan: Plan, log_dir: Path, transport: str) -> dict[str, Any]:
    """The main scenario alone over ``transport``, baseline right before hubbub, ``plan.runs`` times.

    No Node reference here: h2sse needs h2c, which the Node server (plain ``http``) does not serve.
    """
    results: dict[str, Any] = {}
    hints: dict[str, float] = {}
    for run in range(plan.runs):
        for spec in (BASELINE, HUBBUB):
            print(f"run {run + 1}/{plan.runs} {transport} {spec.name:<8} main", flush=True)
            began = time.monotonic()
            out = await scenarios.main_life(spec, transport, plan, log_dir, hints.get(spec.name))
            out["connect"]["life_s"] = round(time.monotonic() - began, 1)
            hints.setdefault(spec.name, out["sustainable"]["rate"] or plan.first_rate)
            out["latency"] = report.latency_summary(out["latency"])
            for scenario, value in out.items():
                _add(results, scenario, transport, spec.name, value)
            _progress(spec.name, out)
    results["scale_out"] = {"status": f"not run (--only {transport})"}
    return results


async def _idle_lives(plan: Plan, log_dir: Path) -> dict[str, Any]:
    """Many idle connections: the floor (Hypercorn, empty app), the baseline, Node and hubbub."""
    results: dict[str, Any] = {"idle": {}}
    for run in range(plan.runs):
        for spec in (FLOOR, BASELINE, NODE, HUBBUB):
            print(f"run {run + 1}/{plan.runs} idle {spec.name:<8} {plan.idle_many:,} connections", flush=True)
            out = await scenarios.idle_life(spec, plan, log_dir)
            results["idle"].setdefault(spec.name, []).append(out)
            cpu = "not measured (sends nothing at rest)" if out["idle_cpu_pct"] is None else \
                f"{out['idle_cpu_pct']}% of a core over {out['idle_s']:.0f} s"
            print(f"    accepted in {out['accept_s']} s | {out['kb_per_connection']} KB per connection | "
                  f"idle CPU {cpu} | {out['closed_while_idle']} closed", flush=True)
    results["scale_out"] = {"status": "not run (--only idle)"}
    return results


def _progress(name: str, out: dict[str, Any]) -> None:
    lat, sus, sat = out["latency"], out["sustainable"], out["saturation"]
    print(f"    [{out['connect']['life_s']} s] connect {out['connect']['seconds']} s | "
          f"latency at arrival p50 {lat.get('arrival_p50_ms')} p99 {lat.get('arrival_p99_ms')} "
          f"max {lat.get('arrival_max_ms')}, when read p50 {lat['p50_ms']} p99 {lat['p99_ms']} "
          f"max {lat['max_ms']} ms | sustainable {sus['deliveries_per_s']:,}/s "
          f"({len(sus['probes'])} probes) | saturation {sat['deliveries_per_s']:,}/s "
          f"lost {sat['lost_pct']}% | CPU: generator {sat['generator_cpu_pct']}% "
          f"server {sat['server_cpu_pct']}% (+{sat['server_waited_pct']}% waiting)", flush=True)


def _extra(data: dict[str, Any]) -> list[str]:
    return _floor_rows(data) + _scale_out_rows(data)


def _floor_rows(data: dict[str, Any]) -> list[str]:
    """Hypercorn's own cost (an empty ASGI app), and hubbub above it: connecting the main
    scenario's subscribers, and memory per idle connection."""
    rows = []
    for transport, per_server in (data.get("runs", {}).get("connect") or {}).items():
        floor, hubbub, node = (report.spread([r["seconds"] for r in per_server.get(name, [])])
                               for name in ("floor", "hubbub", "node"))
        if floor and hubbub:
            versus_node = f"; the floor {floor['median'] / node['median']:.2f}× Node" if node else ""
            rows.append(f"|   connect all: the floor (Hypercorn, empty ASGI app), hubbub | {transport} | s "
                        f"| {report.spread_cell(floor)} | {report.spread_cell(hubbub)} "
                        f"| {hubbub['median'] / floor['median']:.2f}× of the floor{versus_node} | |")
    memory = data.get("runs", {}).get("memory") or {}
    for metric, label, unit in (("kb_per_connection", "memory floor: Hypercorn, empty ASGI app", "KB"),
                                ("connect_s", "connect 5,000 idle: the floor, hubbub", "s")):
        for transport, per_server in memory.items():
            floor = report.spread([r[metric] for r in per_server.get("floor", [])])
            hubbub = report.spread([r[metric] for r in per_server.get("hubbub", [])])
            if floor and hubbub:
                rows.append(f"|   {label} | {transport} | {unit} | {report.spread_cell(floor)} "
                            f"| {report.spread_cell(hubbub)} | {hubbub['median'] / floor['median']:.2f}× "
                            f"of the floor | |")
    return rows


def _scale_out_rows(data: dict[str, Any]) -> list[str]:
    """The scale-out rows: 1 worker and 2 workers in the baseline and hubbub columns."""
    out = data.get("scale_out") or {}
    summary = out.get("summary")
    if not summary:
        return [f"| scale-out, 2 vs 1 worker | - | × | {out.get('status', '')} | | | ≥1.7× |"]
    cell, t = report.spread_cell, out["transport"]
    ratio = summary["ratio"]
    target = f"≥{summary['target']:g}× {summary['verdict']}" if ratio is not None else ""
    cpu, gen = summary["worker_cpu_pct"], summary["generator_cpu_pct"]
    rows = [
        f"| scale-out, 2 vs 1 worker (quota {out['quota_cores']:g} core each) | {t} | deliv/s "
        f"| 1 worker: {cell(summary['one_worker'])} | 2 workers: {cell(summary['two_workers'])} "
        f"| {'-' if ratio is None else f'{ratio:.2f}×'} | {target} |",
        f"|   CPU per worker at sustainable (quota {100 * out['quota_cores']:g}%) | {t} | % "
        f"| {cell(cpu['1'])} | {cell(cpu['2'])} | | |",
        f"|   generator CPU at sustainable | {t} | % | {cell(gen['1'])} | {cell(gen['2'])} | | |",
    ]
    sat = summary.get("saturation")
    if sat:
        ratio = sat["ratio"]
        rows.append(f"|   saturation (flat out), 2 vs 1 worker | {t} | deliv/s | {cell(sat['one_worker'])} "
                    f"| {cell(sat['two_workers'])} | {'-' if ratio is None else f'{ratio:.2f}×'} | |")
    return rows


def _scale_out_notes(out: dict[str, Any]) -> list[str]:
    summary = out.get("summary") or {}
    if not summary:
        return [f"scale-out: {out.get('status', 'not run')}"] if out else []
    notes = []
    if summary.get("capped"):
        notes.append("note: a scale-out search never failed in some run: that figure is a lower bound")
    gen = (summary.get("generator_cpu_pct") or {}).get("2") or {}
    if gen.get("max", 0) > 80:
        notes.append("warning: the generator neared a full core at the two-worker sustainable rate "
                     "(it shares its core with redis-server): the two-worker figure and the ratio "
                     "may be capped by the generator")
    one_cpu = (summary.get("worker_cpu_pct") or {}).get("1") or {}
    if one_cpu and one_cpu["median"] < 0.85 * 100 * out["quota_cores"]:
        notes.append(f"note: at its sustainable rate one worker used {one_cpu['median']:.0f}% of a core, "
                     f"well under its {100 * out['quota_cores']:g}% budget: latency bursts (periodic "
                     "per-connection work, stretched by the quota), not throughput, limited it, so "
                     "the sustainable ratio overstates the scale-out; the saturation ratio is the "
                     "throughput comparison")
    bounds = [r["2"].get("bound") for r in out.get("runs", [])]
    if "core" in bounds:
        notes.append(f"warning: in {bounds.count('core')} of {len(bounds)} scale-out runs the two "
                     "workers failed with the server core full and their budgets not used up "
                     "(softirq work and other processes on that core): the two-worker figure and "
                     "the ratio are capped by the core, not by the budgets; try a lower "
                     "Plan.scale_out_quota")
    waited = summary.get("generator_waited_pct") or {}
    if waited.get("max", 0) > 10:
        notes.append(f"warning: during the scale-out searches the generator waited up to "
                     f"{waited['max']:g}% of the time for its core: other work on the machine; "
                     "noisy figures")
    if len(summary.get("code_versions", [])) > 1:
        notes.append(f"warning: the code changed during the scale-out runs "
                     f"({', '.join(summary['code_versions'])})")
    return notes


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
                        help="regression guard: 200 subscribers, 1 run, short phases (< 2 min); "
                             "skips the scale-out")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 3, quick 1)")
    parser.add_argument("--only", choices=["scale-out", "h2sse", "idle", "rooms", "storm", "redis"],
                        help="run only this scenario (scale-out: ~2.5 min; with --quick 1 short "
                             "run; h2sse: the main scenario with SSE over HTTP/2, ~3 min; idle: "
                             "15,000 idle connections per process, ~6 min per run; rooms: "
                             "1,000 rooms x 10, publish-heavy, hubbub on memory and on Redis beside the "
                             "others, ~2 min per run; storm: 5,000 subscribers reconnecting after a "
                             "restart, ~5 min; redis: hubbub on memory and on Redis, one room, and "
                             "the Lua publish, ~1.5 min per run); "
                             "writes bench/results/NAME.json")
    parser.add_argument("--table", action="store_true",
                        help="print the table of the last results (latest.json, or quick.json "
                             "with --quick, scale-out.json with --only) without running anything")
    args = parser.parse_args()
    name = ("quick" if args.quick else "latest") if not args.only else \
        ("quick-" if args.quick else "") + args.only
    if args.table:
        import json

        path = RESULTS / f"{name}.json"
        if not path.exists():
            print(f"no {path}: run the bench first", file=sys.stderr)
            return 1
        data = json.loads(path.read_text())
        if args.only == "rooms":
            from bench import rooms

            print(rooms.reprint(data))
            return 0
        if args.only == "storm":
            from bench import storm

            print(storm.table(data))
            return 0
        if args.only == "redis":
            from bench import redis_speed

            print(redis_speed.reprint(data))
            return 0
        print(report.table(data["summary"], _extra(data)))
        return 0
    plan = QUICK if args.quick else Plan()
    if args.runs:
        plan = plan.__class__(**{**plan.__dict__, "runs": args.runs})
    if args.only == "scale-out" and plan.scale_out_runs == 0:
        plan = plan.__class__(**{**plan.__dict__, "scale_out_runs": 1})
    if args.only in (None, "idle"):  # the runs with the Node reference
        why = node_unavailable()
        if why:
            print(f"bench: cannot start the Node reference server: {why}", file=sys.stderr)
            return 1
    plan = prepare(plan)
    # SIGTERM as Ctrl-C: the finally blocks stop the servers and redis-server and remove the cgroups.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "mode": "quick" if plan.quick
            else "full", "plan": plan.__dict__, **machine(),
            "busy_before_pct": machine_busy_pct(BUSY_SAMPLE_S[plan.quick])}
    if args.only:
        meta["only"] = args.only
    if args.only == "rooms":  # its own runner, JSON and table: bench/rooms.py
        from bench import rooms

        return rooms.main(rooms.plan_for(plan.quick, args.runs, plan.server_core), meta,
                          RESULTS / f"{name}.json")
    if args.only == "storm":  # its own runner, JSON and table: bench/storm.py
        from bench import storm

        return storm.main(plan.quick, args.runs, plan.server_core, meta, RESULTS / f"{name}.json")
    if args.only == "redis":  # its own runner, JSON and table: bench/redis_speed.py
        from bench import redis_speed

        if not args.runs:  # ~1.5 min a run: one unless asked
            plan = plan.__class__(**{**plan.__dict__, "runs": 1})
        return redis_speed.main(plan, meta, RESULTS / f"{name}.json")
    print(f"bench ({meta['mode']}{', only ' + args.only if args.only else ''}): "
          f"{plan.subscribers} subscribers, "
          f"{plan.scale_out_runs if args.only and plan.scale_out_runs else plan.runs} run(s); "
          f"{meta['cpu']}, {meta['cores']} cores; before starting, other work kept the machine "
          f"{meta['busy_before_pct']}% busy", flush=True)
    if meta["busy_before_pct"] > 15:
        print("warning: the machine is busy: expect noisy figures (see the 'waited for CPU' rows)",
              flush=True)
    started, cpu0 = time.monotonic(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-") as tmp:
        try:
            results = asyncio.run(bench(plan, Path(tmp), args.only))
        except Exception:
            for log in sorted(Path(tmp).glob("*.log"))[-2:]:
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
    wall = time.monotonic() - started
    meta["wall_s"] = round(wall, 1)
    meta["generator_cpu_pct_overall"] = round(100 * (time.process_time() - cpu0) / wall, 1)
    meta["load_avg_after"] = os.getloadavg()
    meta["busy_after_pct"] = machine_busy_pct(BUSY_SAMPLE_S[plan.quick])
    versions = sorted({run["code"] for per_t in results.get("connect", {}).values()
                       for runs in per_t.values() for run in runs if "code" in run}
                      | {run["code"] for scenario in ("slow", "memory")
                         for per_t in results.get(scenario, {}).values()
                         for runs in per_t.values() for run in runs if "code" in run})
    scale = results.pop("scale_out")
    versions = sorted(set(versions) | set((scale.get("summary") or {}).get("code_versions", [])))
    meta["code_versions"] = versions
    summary = report.summarize(results)
    share = generator_share(results)
    prefix = "quick-" if plan.quick else ""
    data = {"meta": meta, "summary": summary, "generator": share, "scale_out": scale, "runs": results}
    report.write_json(RESULTS / f"{name}.json", data)
    if args.only:
        print()
        print(report.table(summary, _extra(data)))
        for note in _scale_out_notes(scale):
            print(note, flush=True)
        print(f"wrote {RESULTS / f'{name}.json'}")
        return 0
    report.plot_latency(RESULTS / f"{prefix}latency.png", results,
                        f"hubbub vs naive baseline and Node, {plan.subscribers} subscribers, "
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
        print("warning: the generator neared a full core at saturation: the fastest servers' "
              "figures (Node's, hubbub's) may be capped by the generator", flush=True)
    for note in _scale_out_notes(scale):
        print(note, flush=True)
    print(f"wrote {RESULTS / f'{name}.json'} and "
          f"{RESULTS / (prefix + 'latency.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
