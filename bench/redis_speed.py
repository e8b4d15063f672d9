"""Redis at full speed: one hubbub process on the in-memory hub and on Redis, in the same run.

- **one room**: the main life (connect, latency, sustainable, saturation) over
  ``plan.subscribers`` subscribers (half SSE, half WebSocket), once on each backend, the
  backends alternating within a run so that both meet the same machine.
- **many rooms** on Redis runs in ``--only rooms`` (``bench/rooms.py``), right after hubbub
  on memory, which that scenario measures anyway.
- **the Lua publish**: a handful of subscribers and the publisher flat out, so the POSTs,
  not the fan-out, are the work: one worker's publishes/s through Redis, the CPU that
  ``redis-server`` spent on them, and from the two what one Redis could take before it is
  the bottleneck (publishes/s ÷ its share of a core).

A private ``redis-server`` (no persistence) for the whole scenario, on the generator's core
(the server under test keeps its own core); each life has a fresh key prefix.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench import report
from bench.scenarios import Plan, _start, kinds, main_life
from bench.servers import HUBBUB, RedisServer, ServerSpec, generator_core
from bench.session import Meter, Session

BACKENDS = ("memory", "redis")
LUA_SUBSCRIBERS = 10  # enough to be a real room, few enough that the POSTs dominate


def on_redis(redis: RedisServer, spec: ServerSpec = HUBBUB) -> ServerSpec:
    """``spec`` with ``REDIS_URL`` and a key prefix of its own (nothing left from a life before)."""
    return replace(spec, env={**spec.env, "REDIS_URL": redis.url,
                              "REDIS_PREFIX": f"bench-{os.getpid()}-{secrets.token_hex(4)}:"})


async def lua_publish(spec: ServerSpec, plan: Plan, log_dir: Path, redis: RedisServer) -> dict[str, Any]:
    """Publishes/s of one worker through the Lua publish, and ``redis-server``'s CPU for them."""
    server = await _start(spec, plan, log_dir)
    session = Session(server)
    try:
        await session.connect(kinds("mix", LUA_SUBSCRIBERS))
        meter = Meter(server)
        redis0, t0 = redis.cpu_s(), time.monotonic()
        out = await session.saturation(plan.saturation_s, plan.saturation_max_messages,
                                       plan.saturation_warmup_s)
        redis_pct = 100 * (redis.cpu_s() - redis0) / (time.monotonic() - t0)
        out.update(meter.read())
        out["redis_cpu_pct"] = round(redis_pct, 1)
        # At this rate Redis was busy redis_pct of a core: a core of it would take this many.
        out["redis_capacity_posts_per_s"] = round(out["posts_per_s"] * 100 / redis_pct) \
            if redis_pct > 1 else None
        return out
    finally:
        session.close()
        server.stop()


async def redis_speed(plan: Plan, log_dir: Path) -> dict[str, Any]:
    redis = RedisServer(generator_core(), log_dir)
    runs: list[dict[str, Any]] = []
    hints: dict[str, float] = {}
    try:
        await redis.ready()
        for run in range(plan.runs):
            record: dict[str, Any] = {}
            for backend in BACKENDS:
                spec = HUBBUB if backend == "memory" else on_redis(redis)
                print(f"redis run {run + 1}/{plan.runs} one room, hubbub on {backend}", flush=True)
                life = await main_life(spec, "mix", plan, log_dir, hints.get(backend))
                life["latency"] = report.latency_summary(life["latency"])
                hints.setdefault(backend, life["sustainable"]["rate"] or plan.first_rate)
                record[backend] = life
                print(f"    sustainable {life['sustainable']['deliveries_per_s']:,} deliv/s, saturation "
                      f"{life['saturation']['deliveries_per_s']:,} deliv/s "
                      f"({life['saturation']['deliveries_per_cpu_s']:,} per CPU-s), p99 at arrival "
                      f"{life['latency']['arrival_p99_ms']} ms", flush=True)
            print(f"redis run {run + 1}/{plan.runs} the Lua publish, flat out", flush=True)
            record["lua"] = lua = await lua_publish(on_redis(redis), plan, log_dir, redis)
            print(f"    {lua['posts_per_s']:,} publishes/s, worker CPU {lua['server_cpu_pct']}%, "
                  f"redis-server {lua['redis_cpu_pct']}% of a core", flush=True)
            runs.append(record)
    finally:
        redis.stop()
    return {"runs": runs, "summary": summarize(runs)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians [min–max] per backend, and Redis over memory as a ratio of the medians."""
    out: dict[str, Any] = {}
    for phase, key in (("sustainable", "deliveries_per_s"), ("saturation", "deliveries_per_s"),
                       ("saturation", "deliveries_per_cpu_s"), ("latency", "arrival_p99_ms"),
                       ("connect", "seconds")):
        row = {b: report.spread([r[b][phase].get(key) for r in runs]) for b in BACKENDS}
        memory, redis = row["memory"], row["redis"]
        row["ratio"] = round(redis["median"] / memory["median"], 3) \
            if memory and redis and memory["median"] else None
        out[f"{phase}.{key}"] = row
    for key in ("posts_per_s", "server_cpu_pct", "redis_cpu_pct", "redis_capacity_posts_per_s"):
        out[f"lua.{key}"] = report.spread([r["lua"].get(key) for r in runs])
    return out


def table(summary: dict[str, Any]) -> str:
    fmt = report.spread_cell
    lines = [f"{'one room, mix':<42} {'memory':>26} {'redis':>26} {'redis/memory':>13}"]
    for name, row in summary.items():
        if name.startswith("lua."):
            continue
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(f"{name:<42} {fmt(row['memory']):>26} {fmt(row['redis']):>26} {ratio:>13}")
    lines.append("")
    lines.append("the Lua publish, one worker flat out:")
    for key, label in (("posts_per_s", "publishes/s"), ("server_cpu_pct", "worker CPU, % of a core"),
                       ("redis_cpu_pct", "redis-server CPU, % of a core"),
                       ("redis_capacity_posts_per_s", "publishes/s one Redis core could take")):
        lines.append(f"  {label:<40} {fmt(summary.get(f'lua.{key}')):>26}")
    return "\n".join(lines)


def main(plan: Plan, meta: dict[str, Any], path: Path) -> int:
    """Runs the scenario, writes ``path`` (JSON) and prints the table; for ``python -m bench``."""
    print(f"bench redis ({meta['mode']}): hubbub on memory and on Redis, {plan.runs} run(s): one room "
          f"of {plan.subscribers:,}, the Lua publish (many rooms on Redis: --only rooms); other "
          f"work kept the machine {meta.get('busy_before_pct')}% busy", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-redis-") as tmp:
        try:
            out = asyncio.run(redis_speed(plan, Path(tmp)))
        except Exception:
            for log in sorted(Path(tmp).glob("*.log"))[-2:]:
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}", file=sys.stderr)
            raise
    meta = {**meta, "wall_s": round(time.monotonic() - started, 1)}
    report.write_json(path, {"meta": meta, **out})
    print()
    print(reprint(out))
    print(f"wall time {meta['wall_s']:.0f} s; wrote {path}")
    return 0


def reprint(data: dict[str, Any]) -> str:
    """The table of a results file (``--table --only redis``)."""
    return table(data["summary"])
