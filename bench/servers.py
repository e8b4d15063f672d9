"""Servers under test: Hypercorn subprocesses pinned to one core, their CPU time and memory.

``--workers 0`` makes Hypercorn serve in the process it starts (no supervisor), so the
PID we hold is the one whose RSS and CPU we read. A spec with ``workers >= 1`` (the
scale-out scenario) gets a supervisor; then the figures are summed over its children.
"""

from __future__ import annotations

import asyncio
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
    name: str  # "baseline" or "hubbub"
    app: str  # Hypercorn application path
    authenticated: bool  # needs ?token= and a bearer
    env: dict[str, str] = field(default_factory=dict)
    workers: int = 0


BASELINE = ServerSpec("baseline", "bench.baseline_app:create_app()", authenticated=False)
HUBBUB = ServerSpec("hubbub", "app:create_app()", authenticated=True,
                    env={"JWT_SECRET": SECRET, **UNTHROTTLED})


def token(user: str, ttl_s: int = 3600) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + ttl_s}, SECRET, algorithm="HS256")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def code_version(paths: tuple[str, ...] = ("app", "bench/baseline_app.py")) -> str:
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


class Server:
    """One running Hypercorn; ``stop()`` always ends it (SIGTERM, then SIGKILL)."""

    def __init__(self, spec: ServerSpec, core: int | None, log_dir: Path) -> None:
        self.spec = spec
        self.version = code_version()
        self.port = free_port()
        self.log_path = log_dir / f"{spec.name}-{self.port}.log"
        cmd = [sys.executable, "-m", "hypercorn", "--worker-class", "uvloop",
               "--workers", str(spec.workers), "--bind", f"127.0.0.1:{self.port}", spec.app]
        if core is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(core), *cmd]
        env = {**os.environ, **spec.env}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        if core is not None and not shutil.which("taskset"):
            os.sched_setaffinity(self.proc.pid, {core})

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
        total = 0
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime
        return total / _TICK

    def run_wait_s(self) -> float:
        """Seconds the serving processes were runnable but waited for a CPU (others' load)."""
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
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
