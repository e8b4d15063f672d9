"""SSE over HTTPS and HTTP/2 in Chromium: more streams to one origin than HTTP/1.1 allows
(6 per origin: the 7th request, POSTs included, would hang), all on one connection."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.conftest import make_token, run_server, write_certificate

ESTABLISHED = "01"  # the state column of /proc/net/tcp

EIGHT_STREAMS_THEN_POST = """async ({ token, notify }) => {
  const streams = [];
  const received = new Set();
  await Promise.all([...Array(8).keys()].map((i) => new Promise((resolve, reject) => {
    const stream = new EventSource(`/sse/notifications?token=${token}`);
    streams.push(stream);
    stream.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "welcome") resolve();
      if (frame.type === "notification") received.add(i);
    };
    stream.onerror = () => reject(new Error(`stream ${i} failed`));
  })));
  const reply = await fetch("/api/notifications", {
    method: "POST",
    headers: { Authorization: `Bearer ${notify}`, "Content-Type": "application/json" },
    body: JSON.stringify({ broadcast: true, data: "to all eight" }),
  });
  const deadline = Date.now() + 5000;
  while (received.size < 8 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  const protocols = performance.getEntriesByType("resource").map((entry) => entry.nextHopProtocol);
  streams.forEach((stream) => stream.close());
  return { status: reply.status, received: received.size, protocols };
}"""


async def test_eight_sse_streams_and_a_post_over_http2_in_chromium(browser: Any, tmp_path: Path) -> None:
    write_certificate(tmp_path)
    async with run_server(tls=tmp_path) as server:
        context = await browser.new_context(ignore_https_errors=True)
        try:
            page = await context.new_page()
            await page.goto(f"{server.url}/healthz")
            result = await page.evaluate(EIGHT_STREAMS_THEN_POST, {
                "token": make_token("alice"), "notify": make_token("ops", scope="notify")})
        finally:
            await context.close()
        # Chromium closes the context's connection after close() returns. A TLS connection
        # the server shuts down meanwhile gets data after its close_notify, and Hypercorn
        # 0.18 lets that SSLError out of its connection task: wait for the close first.
        async with asyncio.timeout(5):
            while True:  # no event says when the kernel has it: /proc is polled
                if not connections_to(server.port):
                    break
                await asyncio.sleep(0.02)
    assert result["status"] == 202
    assert result["received"] == 8
    assert set(result["protocols"]) == {"h2"}


def connections_to(port: int) -> int:
    """The server's established TCP connections on ``port`` (this machine's, from /proc)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            count += int(local.rsplit(":", 1)[1], 16) == port and state == ESTABLISHED
    return count
