"""Prometheus metrics (prometheus-client), right across Hypercorn's workers.

Each Hubbub has a ``Metrics`` of its own, in a registry of its own, so a host app's
default registry is left alone and two hubs in one process count apart. With
PROMETHEUS_MULTIPROC_DIR set (the standalone server sets it for its workers), every
process writes its values to files there and a scrape of any worker sums them all:
counters add up, gauges of live things add up over the live workers.
docs/operations.md lists each metric and what to alert on.

What changes per delivery is counted in plain integers on the hot path and moved into
the metrics once a second (``Hubbub``'s sync task): a metric call per delivery would cost
more than the delivery itself.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

# Reasons of auth_failures, from the fixed details of Unauthorized (anything else: "invalid").
AUTH_REASONS = {"token expired": "expired", "bad signature": "bad_signature", "malformed token": "malformed",
                "unknown API key": "unknown_key", "ticket unknown, used or expired": "ticket"}
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def channel_kind(channel: str) -> str:
    """room, user or broadcast: a label with three values, never the channel itself."""
    return channel.partition(":")[0]


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.build_info = Gauge("hubbub_build_info", "Always 1; the version serving.", ["version"],
                                multiprocess_mode="max", registry=r)
        self.fast_path = Gauge("hubbub_fast_path", "1 when live connections write straight to their "
                               "sockets (HTTP/1.1 on the tested Hypercorn); 0 when any worker cannot.",
                               multiprocess_mode="min", registry=r)
        self.connections = Gauge("hubbub_connections", "Live connections now.", ["transport", "endpoint"],
                                 multiprocess_mode="livesum", registry=r)
        self.max_connections = Gauge("hubbub_max_connections", "MAX_CONNECTIONS, summed over the workers.",
                                     multiprocess_mode="livesum", registry=r)
        self.subscriptions = Gauge("hubbub_subscriptions", "Channels subscribed by live connections.",
                                   ["channel_kind"], multiprocess_mode="livesum", registry=r)
        self.outbox_depth = Gauge("hubbub_outbox_depth", "Messages queued for sockets that are backed up.",
                                  multiprocess_mode="livesum", registry=r)
        self.backend_up = Gauge("hubbub_backend_up", "1 when the backend (memory or Redis) answers.",
                                multiprocess_mode="min", registry=r)
        self.backend_rtt = Gauge("hubbub_backend_rtt_seconds", "The last backend ping's round trip.",
                                 multiprocess_mode="max", registry=r)
        self.retained = Gauge("hubbub_retained", "What the in-memory backend holds, by kind.", ["kind"],
                              multiprocess_mode="livesum", registry=r)
        self.emitted = Gauge("hubbub_emitter_messages", "Messages published by hubbub.client's Redis "
                             "emitters, all time (counted in Redis: no server sees them published).",
                             ["channel_kind"], multiprocess_mode="max", registry=r)
        self.opened = Counter("hubbub_connections_opened", "Connections opened.", ["transport", "endpoint"],
                              registry=r)
        self.refused = Counter("hubbub_connections_refused", "Connections refused before they opened.",
                               ["reason"], registry=r)
        self.published = Counter("hubbub_messages_published", "Messages published through this server.",
                                 ["source", "channel_kind"], registry=r)
        self.deliveries = Counter("hubbub_deliveries", "Messages handed to subscribers (one each).",
                                  registry=r)
        self.dropped = Counter("hubbub_dropped", "Messages or connections dropped, by reason.", ["reason"],
                               registry=r)
        self.auth_failures = Counter("hubbub_auth_failures", "Refused credentials, by reason and endpoint.",
                                     ["reason", "path"], registry=r)
        self.publish_to_socket = Histogram(
            "hubbub_publish_to_socket_seconds",
            "From a message's timestamp to the end of its fan-out in this process.",
            buckets=LATENCY_BUCKETS, registry=r)

        # Children of the per-connection metrics, looked up once: ``labels()`` costs ~2 µs a
        # call, five calls per connection.
        self._live: dict[tuple[str, str], tuple[Counter, Gauge]] = {}
        self._subscribed: dict[str, Gauge] = {}

    def live(self, transport: str, endpoint: str) -> tuple[Counter, Gauge]:
        """The ``opened`` counter and the ``connections`` gauge of one transport and endpoint."""
        children = self._live.get((transport, endpoint))
        if children is None:
            children = self._live[transport, endpoint] = (self.opened.labels(transport, endpoint),
                                                          self.connections.labels(transport, endpoint))
        return children

    def subscribed(self, channel: str) -> Gauge:
        """The ``subscriptions`` gauge of the channel's kind."""
        kind = channel_kind(channel)
        child = self._subscribed.get(kind)
        if child is None:
            child = self._subscribed[kind] = self.subscriptions.labels(kind)
        return child

    def auth_failure(self, detail: str, path: str) -> None:
        reason = AUTH_REASONS.get(detail, "missing" if "required" in detail else "invalid")
        self.auth_failures.labels(reason, path).inc()

    def exposition(self) -> bytes:
        """The text format: every worker's values summed (multiprocess), or this hub's."""
        if multiprocess():
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))
