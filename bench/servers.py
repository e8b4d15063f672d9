"""Servers under test: Hypercorn (or Node.js) subprocesses pinned to one core, their CPU time and memory.

``--workers 0`` makes Hypercorn serve in the process it starts (no supervisor), so the
PID we hold is the one whose RSS and CPU we read. A spec with ``workers >= 1`` gets a
supervisor; then the figures are summed over its children. (The scale-out scenario does
not use one: it starts separate ``--workers 0`` processes, see ``scenarios.scale_out``.)

Also: ``CpuQuota``, a CPU budget for one process (a cgroup of its own, v1 or v2), and
``RedisServer``, a private throw-away ``redis-server`` for the scale-out scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jwt

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-that-is-long-enough-for-hs256-signing"
_TICK = os.sysconf("SC_CLK_TCK")

# Nobody in the bench may be throttled or capped by hubbub's per-user limits.
UNTHROTTLED = {
    "RATE_LIMIT_PER_SECOND": "1000000",
    "RATE_LIMIT_BURST": "1000000",
    "MAX_CONNECTIONS_PER_USER": "100000",
    "LOG_LEVEL": "WARNING",
}


@dataclass(frozen=True)
class ServerSpec:
    name: str  # "baseline", "hubbub", "node" or "floor"
    app: str  # Hypercorn application path; kind "node": the script, relative to ROOT
    authenticated: bool  # needs ?token= and a bearer
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 0
    publishes: bool = True  # False: holds connections, delivers nothing (the floor)
    kind: str = "hypercorn"  # or "node": ``node APP --port PORT``
    backlog: int | None = None  # Hypercorn's listen backlog (None: its default, 100)
    beats: bool = True  # sends heartbeats or pings on idle connections (the idle CPU scenario)


BASELINE = ServerSpec("baseline", "bench.baseline_app:create_app()", authenticated=False, beats=False)
# Hypercorn holding connections for an empty ASGI app: the memory scenario's floor.
FLOOR = ServerSpec("floor", "bench.floor_app:app", authenticated=False, publishes=False, beats=False)
# As `python -m app serve` runs it, with its listen backlog (app/serve.py: LISTEN_BACKLOG; not
# imported, as importing `app` sets up the metrics directory in the generator's process).
HUBBUB = ServerSpec("hubbub", "app:create_app()", authenticated=True,
                    env={"JWT_SECRET": SECRET, **UNTHROTTLED}, backlog=1024)
# The best non-Python reference: Node.js, the http module and ws (bench/node/server.js).
NODE = ServerSpec("node", "bench/node/server.js", authenticated=False, kind="node")
NODE_INSTALL = "cd bench/node && npm ci --no-audit --no-fund"


def node_unavailable() -> str | None:
    """Why the Node reference cannot start here (and how to fix it), or None."""
    if shutil.which("node") is None:
        return "node is not on PATH: install Node.js (>= 18) for the Node reference server"
    if not (ROOT / "bench/node/node_modules/ws").is_dir():
        return f"bench/node/node_modules is missing: run `{NODE_INSTALL}` (installs ws, pinned)"
    return None


def _command(spec: ServerSpec, port: int) -> list[str]:
    if spec.kind == "node":
        why = node_unavailable()
        if why:
            raise RuntimeError(why)
        return ["node", spec.app, "--port", str(port)]
    backlog = [] if spec.backlog is None else ["--backlog", str(spec.backlog)]
    return [sys.executable, "-m", "hypercorn", "--worker-class", "uvloop", *backlog,
            "--workers", str(spec.workers), "--bind", f"127.0.0.1:{port}", spec.app]


def token(user: str, ttl_s: int = 3600) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + ttl_s}, SECRET, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def code_version(paths: tuple[str, ...] = ("hubbub", "app", "bench/baseline_app.py",
                                           "bench/node/server.js")) -> str:
    """HEAD plus a digest of the served sources as they are now (they may move during a run)."""
    digest = hashlib.sha1()
    for root in paths:
        base = ROOT / root
        for path in sorted(base.rglob("*.py")) if base.is_dir() else [base]:
            try:
                digest.update(path.read_bytes())
            except OSError:
                continue
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        head = "?"
    return f"{head}+{digest.hexdigest()[:8]}"


def _pinned(cmd: list[str], core: int | None) -> list[str]:
    if core is not None and shutil.which("taskset"):
        return ["taskset", "-c", str(core), *cmd]
    return cmd


def _pin(pid: int, core: int | None) -> None:
    if core is not None and not shutil.which("taskset"):
        os.sched_setaffinity(pid, {core})


def _stop(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


def _cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def core_times(core: int) -> list[int]:
    """``/proc/stat`` ticks of one core: user nice system idle iowait irq softirq steal."""
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{core} "):
                return [int(x) for x in line.split()[1:9]]
    except (OSError, ValueError):
        pass
    return []


class CpuQuotaUnavailable(RuntimeError):
    """No writable cgroup CPU controller: a CPU budget cannot be enforced here."""


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path in the v1 hierarchy of ``controller`` (None: the v2 one)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if (controller is None and controllers == "") or (
                controller is not None and controller in controllers.split(",")):
            return path or "/"
    return "/"


def _cgroup_base() -> tuple[int, Path]:
    """(cgroup version, the directory new cgroups go in: under this process's own cgroup)."""
    root = Path("/sys/fs/cgroup")
    if (root / "cgroup.controllers").exists():  # v2, unified
        base = root / _own_cgroup(None).lstrip("/")
        try:
            if "cpu" not in (base / "cgroup.controllers").read_text().split():
                raise CpuQuotaUnavailable(f"cgroup v2: no cpu controller in {base}")
            if "cpu" not in (base / "cgroup.subtree_control").read_text().split():
                (base / "cgroup.subtree_control").write_text("+cpu")
        except OSError as exc:
            raise CpuQuotaUnavailable(f"cgroup v2: cannot enable the cpu controller in {base}: "
                                      f"{exc}") from exc
        return 2, base
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        hierarchy = root / name
        if (hierarchy / "cpu.cfs_quota_us").exists():
            return 1, hierarchy / _own_cgroup("cpu").lstrip("/")
    raise CpuQuotaUnavailable("no cgroup v2 (/sys/fs/cgroup/cgroup.controllers) and no cgroup v1 "
                              "cpu controller with CFS quotas (/sys/fs/cgroup/cpu/cpu.cfs_quota_us)")


class CpuQuota:
    """A CPU budget of ``cores`` (a fraction of one core) for the processes put in it.

    A cgroup of its own: v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` or v2 ``cpu.max``,
    period 100 ms. A process over its budget is throttled until the next period. Raises
    ``CpuQuotaUnavailable`` when no cgroup can be made (not root, read-only, no controller).
    """

    PERIOD_US = 100_000

    def __init__(self, name: str, cores: float) -> None:
        self.version, base = _cgroup_base()
        self.cores = cores
        self.path = base / name
        quota = max(1000, round(cores * self.PERIOD_US))
        try:
            self.path.mkdir()
        except OSError as exc:
            raise CpuQuotaUnavailable(f"cannot create the cgroup {self.path}: {exc}") from exc
        try:
            if self.version == 1:
                (self.path / "cpu.cfs_period_us").write_text(str(self.PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota))
            else:
                (self.path / "cpu.max").write_text(f"{quota} {self.PERIOD_US}")
        except OSError as exc:
            self.remove()
            raise CpuQuotaUnavailable(f"cannot set the CPU quota of {self.path}: {exc}") from exc

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttling(self) -> tuple[int, int, float]:
        """(periods, periods in which the budget ran out, seconds spent throttled) so far."""
        stat: dict[str, int] = {}
        try:
            for line in (self.path / "cpu.stat").read_text().splitlines():
                key, _, value = line.partition(" ")
                stat[key] = int(value)
        except (OSError, ValueError):
            return 0, 0, 0.0
        throttled_s = stat.get("throttled_time", 0) / 1e9 if self.version == 1 else \
            stat.get("throttled_usec", 0) / 1e6
        return stat.get("nr_periods", 0), stat.get("nr_throttled", 0), throttled_s

    def remove(self, timeout_s: float = 2.0) -> None:
        """Removes the cgroup (its processes must have exited: retried while it is busy)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    print(f"warning: could not remove the cgroup {self.path}", file=sys.stderr)
                    return
                time.sleep(0.05)


def cpu_quota_unavailable() -> str | None:
    """Why a ``CpuQuota`` cannot be made here, or None: tries one and removes it."""
    try:
        CpuQuota(f"hubbub-bench-check-{os.getpid()}", 0.5).remove()
    except CpuQuotaUnavailable as exc:
        return str(exc)
    return None


class Server:
    """One running Hypercorn; ``stop()`` always ends it (SIGTERM, then SIGKILL).

    ``cpu_quota``: a CPU budget in cores (``CpuQuota``) for the serving process, removed
    by ``stop()``; only with ``workers == 0`` (a supervisor's children are not moved).
    ``port``: listen there instead of on a free port (the storm restarts a server in place).
    """

    def __init__(self, spec: ServerSpec, core: int | None, log_dir: Path,
                 cpu_quota: float | None = None, port: int | None = None) -> None:
        self.spec = spec
        self.core = core
        self.version = code_version()
        self.port = free_port() if port is None else port
        self.log_path = log_dir / f"{spec.name}-{self.port}.log"
        self.quota: CpuQuota | None = None
        if cpu_quota is not None:
            assert spec.workers == 0, "a CPU quota needs the serving process itself"
            self.quota = CpuQuota(f"hubbub-bench-{self.port}", cpu_quota)
        cmd = _command(spec, self.port)
        env = {**os.environ, **spec.env}
        try:
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(_pinned(cmd, core), cwd=ROOT, env=env, stdout=log,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except BaseException:
            if self.quota is not None:
                self.quota.remove()
            raise
        try:
            _pin(self.proc.pid, core)
            if self.quota is not None:
                # Before it has imported anything: the budget holds from start-up on.
                self.quota.add(self.proc.pid)
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        """The serving processes: this one, or its worker children under a supervisor."""
        if self.spec.workers == 0:
            return [self.proc.pid]
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return [self.proc.pid]
        return [int(p) for p in children.split()] or [self.proc.pid]

    def cpu_s(self) -> float:
        return sum(_cpu_s(pid) for pid in self.pids)

    def throttled_s(self) -> float:
        """Seconds its CPU quota held it back so far (0 without one)."""
        return self.quota.throttling()[2] if self.quota is not None else 0.0

    def run_wait_s(self) -> float:
        """Seconds the serving processes were runnable but waited for a CPU.

        Others' load, or, under a ``cpu_quota``, also the time it was throttled.
        """""
        total = 0
        for pid in self.pids:
            try:
                total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
        return total / 1e9

    def rss_kb(self) -> int:
        total = 0
        for pid in self.pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def ready(self, timeout_s: float = 20.0) -> None:
        """Waits until GET /healthz answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited at start:\n{self.log_tail()}")
            try:
                async with asyncio.timeout(1.0):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                    line = await reader.readline()
                    writer.close()
                if b" 200 " in line:
                    return
            except (OSError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.spec.name} not ready in {timeout_s} s:\n{self.log_tail()}")

    async def wait_idle(self, quiet_s: float = 0.3, timeout_s: float = 5.0) -> None:
        """Waits until the server burns (almost) no CPU for ``quiet_s``: its backlog is written."""
        deadline = time.monotonic() + timeout_s
        last = self.cpu_s()
        while time.monotonic() < deadline:
            await asyncio.sleep(quiet_s)
            now = self.cpu_s()
            if now - last < quiet_s * 0.05:
                return
            last = now

    def stop(self, timeout_s: float = 3.0) -> None:
        try:
            _stop(self.proc, timeout_s)
        finally:
            if self.quota is not None:
                self.quota.remove()


def generator_core() -> int | None:
    """The one core this process (the load generator) is pinned to; None when not pinned to one.
    A private ``redis-server`` runs there: the server under test keeps its own core."""
    cores = sorted(os.sched_getaffinity(0))
    return cores[0] if len(cores) == 1 else None


class RedisServer:
    """A private ``redis-server`` on a free port, no persistence; ``stop()`` always ends it."""

    def __init__(self, core: int | None, log_dir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise FileNotFoundError("redis-server is not on PATH")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_dir / f"redis-{self.port}.log"
        cmd = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(_pinned(cmd, core), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        try:
            _pin(self.proc.pid, core)
        except BaseException:
            self.stop()
            raise

    def cpu_s(self) -> float:
        return _cpu_s(self.proc.pid)

    async def ready(self, timeout_s: float = 10.0) -> None:
        """Waits until it answers PING."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1.0):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    try:
                        writer.write(b"PING\r\n")
                        if (await reader.readline()).startswith(b"+PONG"):
                            return
                    finally:
                        writer.close()
            await asyncio.sleep(0.05)
        try:
            tail = self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            tail = ""
        raise RuntimeError(f"redis-server not ready in {timeout_s} s:\n{tail}")

    def stop(self, timeout_s: float = 3.0) -> None:
        _stop(self.proc, timeout_s)
