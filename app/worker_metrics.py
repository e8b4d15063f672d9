"""One metrics directory for all the workers of one server, set before anything imports
prometheus-client (which reads PROMETHEUS_MULTIPROC_DIR once, when imported).

``python -m app serve`` makes the directory for its workers itself. Under a plain
``hypercorn -w N 'app:create_app()'``, each worker is a spawned child of Hypercorn's
supervisor and imports this package first: the workers of one supervisor agree on a
directory named after it (its pid and start time, so a recycled pid starts afresh).
A single process needs none.
"""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from pathlib import Path

VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


def share_metrics_across_workers() -> None:
    if os.environ.get(VARIABLE):
        return
    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return  # one process: its own metrics are all there is
    try:
        started = Path(f"/proc/{parent.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return  # not Linux: each worker reports its own
    directory = Path(tempfile.gettempdir()) / f"hubbub-metrics-{parent.pid}-{started}"
    directory.mkdir(mode=0o700, exist_ok=True)
    os.environ[VARIABLE] = str(directory)


def fresh_directory() -> str:
    """A directory for the workers ``python -m app serve`` is about to start."""
    directory = tempfile.mkdtemp(prefix="hubbub-metrics-")
    os.environ[VARIABLE] = directory
    return directory
