// Unit tests of static/hubbub.js: the pure helpers, then the client against fake
// WebSocket / EventSource / fetch (no server, no browser). Run: node --test tests/js/
import assert from "node:assert/strict";
import { afterEach, describe, mock, test } from "node:test";

import {
  CLOSE_CODES, Dedupe, ERROR_CODES, Hubbub, HubbubError, backoff, closeAction, parseId,
} from "../../static/hubbub.js";

describe("backoff", () => {
  test("test_backoff_never_below_the_floor", () => {
    assert.equal(backoff(5, 500, 20000, () => 0), 500);
    assert.equal(backoff(0, 500, 20000, () => 0), 500);
  });

  test("test_backoff_jitter_window_doubles_per_step_from_min", () => {
    const almostOne = () => 0.999999;
    assert.equal(backoff(0, 500, 20000, almostOne), 999);
    assert.equal(backoff(1, 500, 20000, almostOne), 1499);
    assert.equal(backoff(3, 500, 20000, almostOne), 4499);
  });

  test("test_backoff_large_step_capped_at_max", () => {
    const almostOne = () => 0.999999;
    assert.equal(backoff(6, 500, 20000, almostOne), 20000);
    assert.equal(backoff(1000, 500, 20000, almostOne), 20000); // 2**step must not overflow to NaN/Infinity
  });

  test("test_backoff_jitter_spreads_over_the_whole_window_above_the_floor", () => {
    const delays = Array.from({ length: 2000 }, () => backoff(10));
    assert.ok(delays.every((d) => Number.isInteger(d) && d >= 500 && d <= 20000));
    // Jitter over the whole window, not "equal" jitter: both ends are reached.
    assert.ok(delays.some((d) => d < 2500), "some delays near the floor");
    assert.ok(delays.some((d) => d > 18000), "some delays near the cap");
  });

  test("test_backoff_defaults_and_negative_step", () => {
    const first = backoff(0);
    assert.ok(first >= 500 && first < 1000);
    assert.equal(backoff(-3, 500, 20000, () => 0.5), 750);
  });
});

describe("Dedupe", () => {
  test("test_dedupe_same_id_twice_is_duplicate", () => {
    const d = new Dedupe();
    assert.equal(d.seen("ab12-1"), false);
    assert.equal(d.seen("ab12-1"), true);
    assert.equal(d.last, "ab12-1");
  });

  test("test_dedupe_older_seq_in_same_epoch_is_duplicate", () => {
    const d = new Dedupe();
    assert.equal(d.seen("e-5"), false);
    assert.equal(d.seen("e-7"), false);
    assert.equal(d.seen("e-6"), true, "a replay overlapping live delivery");
    assert.equal(d.seen("e-3"), true);
    assert.equal(d.seen("e-8"), false);
    assert.equal(d.last, "e-8");
  });

  test("test_dedupe_seq_compared_as_numbers_not_strings", () => {
    const d = new Dedupe();
    assert.equal(d.seen("e-9"), false);
    assert.equal(d.seen("e-10"), false);
  });

  test("test_dedupe_new_epoch_resets_sequence", () => {
    const d = new Dedupe();
    d.seen("old-500");
    assert.equal(d.seen("new-1"), false, "history restarted: seq 1 is new");
    assert.equal(d.seen("new-2"), false);
    assert.equal(d.seen("new-1"), true);
    assert.equal(d.last, "new-2");
  });

  test("test_dedupe_epoch_containing_dashes", () => {
    assert.deepEqual(parseId("a-b-c-42"), { epoch: "a-b-c", seq: 42 });
    assert.equal(parseId("opaque"), null);
    assert.equal(parseId("-5"), null);
    assert.equal(parseId("e-"), null);
  });

  test("test_dedupe_opaque_ids_bounded_memory", () => {
    const d = new Dedupe(3);
    for (const id of ["a", "b", "c", "d"]) assert.equal(d.seen(id), false);
    assert.equal(d.seen("d"), true);
    assert.equal(d.seen("b"), true);
    assert.equal(d.seen("a"), false, "the oldest id fell out of the bounded memory");
  });

  test("test_dedupe_sequence_rule_outlives_bounded_memory", () => {
    const d = new Dedupe(1);
    d.seen("e-1");
    d.seen("opaque"); // pushes e-1 out of the one-slot memory
    assert.equal(d.seen("e-1"), true, "still a repeat by its sequence number");
  });

  test("test_dedupe_remember_does_not_move_cursor", () => {
    const d = new Dedupe();
    d.seen("e-1");
    assert.equal(d.remember("e-5"), false, "own message, known from its ack");
    assert.equal(d.last, "e-1");
    assert.equal(d.seen("e-4"), false, "a message older than our own still arrives");
    assert.equal(d.seen("e-5"), true, "our own message replayed is dropped");
    assert.equal(d.last, "e-5", "but moves the cursor");
    assert.equal(d.remember("e-5"), true);
  });
});

describe("close codes", () => {
  const expected = {
    1000: "stop", 1006: "retry", 1009: "retry", 1011: "retry", 1012: "retry", 1013: "retry",
    4400: "stop", 4401: "refresh", 4403: "stop", 4429: "retry",
  };
  for (const [code, action] of Object.entries(expected)) {
    test(`test_closeAction_${code}_${action}`, () => assert.equal(closeAction(Number(code)), action));
  }

  test("test_closeAction_unknown_codes_retry", () => {
    for (const code of [1001, 1005, 1015, 4000, 4999]) assert.equal(closeAction(code), "retry");
  });

  test("test_close_codes_are_4000_plus_http_status", () => {
    for (const [code, { name }] of Object.entries(CLOSE_CODES)) {
      if (Number(code) >= 4000 && ERROR_CODES[name] !== undefined) {
        assert.equal(ERROR_CODES[name], Number(code) - 4000, name);
      }
    }
    assert.equal(ERROR_CODES.rate_limited, 429);
    assert.ok(Object.isFrozen(CLOSE_CODES) && Object.isFrozen(ERROR_CODES));
  });
});

// ---------------------------------------------------------------------------
// The client, against fakes
// ---------------------------------------------------------------------------

class FakeWebSocket {
  /** @type {FakeWebSocket[]} */
  static all = [];

  constructor(url) {
    this.url = new URL(url);
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.all.push(this);
  }

  send(text) {
    this.sent.push(JSON.parse(text));
  }

  close(code = 1000) {
    this.closedWith = code;
  }

  // The server's side:
  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  welcome(extra = {}) {
    this.receive({ type: "welcome", channel: "room:lobby", user: "alice", recovered: null, heartbeat: 15, ...extra });
  }

  serverClose(code, reason = "") {
    this.onclose?.({ code, reason });
  }
}

class FakeEventSource {
  /** @type {FakeEventSource[]} */
  static all = [];

  constructor(url) {
    this.url = new URL(url);
    this.closed = false;
    FakeEventSource.all.push(this);
  }

  close() {
    this.closed = true;
  }

  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  fail() {
    this.onerror?.({});
  }
}

/** A fake hub over HTTP: tickets, and POSTed chat answered 202 {id}. */
function fakeFetch() {
  const calls = [];
  let tickets = 0;
  let ids = 100;
  const fetch = async (url, init) => {
    const { pathname } = new URL(url);
    calls.push({ pathname, method: init.method, auth: init.headers.Authorization, body: init.body });
    if (pathname === "/auth/ticket") return json(200, { ticket: `t${++tickets}`, expires_in: 30 });
    if (init.method === "POST") return json(202, { id: `e-${++ids}` });
    return json(200, { messages: [], recovered: true });
  };
  return { fetch, calls };
}

function json(status, body) {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

/** Polls until `check()` is truthy (the client works through promises and 0-1 ms timers). */
async function until(check, what = "condition") {
  const deadline = Date.now() + 2000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

const clients = [];

function makeClient(options = {}) {
  const http = fakeFetch();
  const tokens = [];
  const client = new Hubbub({
    baseUrl: "https://hub.test",
    channel: { room: "lobby" },
    getToken: async () => {
      tokens.push(`jwt${tokens.length + 1}`);
      return tokens.at(-1);
    },
    minDelayMs: 1,
    maxDelayMs: 2,
    WebSocket: /** @type {any} */ (FakeWebSocket),
    EventSource: /** @type {any} */ (FakeEventSource),
    fetch: /** @type {any} */ (http.fetch),
    ...options,
  });
  const events = [];
  for (const type of ["state", "message", "welcome", "resync", "error"]) {
    client.addEventListener(type, (e) => events.push({ type, detail: /** @type {CustomEvent} */ (e).detail }));
  }
  clients.push(client);
  return { client, http, tokens, events, of: (type) => events.filter((e) => e.type === type).map((e) => e.detail) };
}

afterEach(() => {
  for (const client of clients.splice(0)) client.close();
  FakeWebSocket.all = [];
  FakeEventSource.all = [];
});

describe("Hubbub client", () => {
  test("test_client_puts_ticket_not_token_in_url", async () => {
    const { client, http } = makeClient();
    client.connect();
    await until(() => FakeWebSocket.all.length === 1, "a socket");
    const ws = FakeWebSocket.all[0];
    assert.equal(`${ws.url.origin}${ws.url.pathname}`, "wss://hub.test/ws/chat");
    assert.equal(ws.url.searchParams.get("room"), "lobby");
    assert.equal(ws.url.searchParams.get("ticket"), "t1");
    assert.equal(ws.url.searchParams.get("since"), null);
    assert.ok(!ws.url.href.includes("jwt"), "no token in the URL");
    assert.deepEqual(http.calls[0], { pathname: "/auth/ticket", method: "POST", auth: "Bearer jwt1", body: undefined });
    ws.welcome();
    assert.equal(client.state, "open");
    assert.equal(client.transport, "websocket");
    assert.equal(client.user, "alice");
  });

  test("test_client_resumes_from_last_id_and_drops_replayed_duplicates", async () => {
    const { client, of } = makeClient();
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    const first = FakeWebSocket.all[0];
    first.welcome();
    first.receive({ type: "chat", text: "one", id: "e-1" });
    first.receive({ type: "chat", text: "two", id: "e-2" });
    first.serverClose(1012, "restarting");
    assert.equal(client.state, "reconnecting");
    await until(() => FakeWebSocket.all.length === 2, "a second socket");
    const second = FakeWebSocket.all[1];
    assert.equal(second.url.searchParams.get("since"), "e-2");
    assert.equal(second.url.searchParams.get("ticket"), "t2", "a fresh ticket per connection");
    second.welcome({ recovered: true });
    second.receive({ type: "chat", text: "two", id: "e-2" });
    second.receive({ type: "chat", text: "three", id: "e-3" });
    assert.deepEqual(of("message").map((m) => m.text), ["one", "two", "three"]);
    assert.equal(client.lastId, "e-3");
    assert.deepEqual(of("resync"), [], "recovered: no resync");
  });

  test("test_client_falls_back_to_sse_after_two_websocket_failures", async () => {
    const { client, http, of } = makeClient({ since: "e-7" });
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    FakeWebSocket.all[0].serverClose(1006);
    await until(() => FakeWebSocket.all.length === 2);
    FakeWebSocket.all[1].serverClose(1006);
    await until(() => FakeEventSource.all.length === 1, "an event source");
    const es = FakeEventSource.all[0];
    assert.equal(es.url.pathname, "/sse/chat");
    assert.equal(es.url.searchParams.get("last_event_id"), "e-7");
    assert.equal(es.url.searchParams.get("ticket"), "t3");
    es.receive({ type: "welcome", channel: "room:lobby", user: "alice", recovered: true, heartbeat: 15 });
    assert.equal(client.transport, "sse");
    assert.deepEqual(of("state").at(-1), { state: "open", transport: "sse" });

    const ack = await client.send("over http");
    assert.equal(ack.type, "ack");
    const post = http.calls.at(-1);
    assert.equal(post.pathname, "/api/rooms/lobby/messages");
    assert.match(post.auth, /^Bearer jwt\d+$/);
    assert.deepEqual(JSON.parse(post.body), { text: "over http" });
    // The stream carries our own message too; it is emitted once only.
    es.receive({ type: "chat", text: "over http", id: ack.id, sender: "alice" });
    assert.deepEqual(of("message").map((m) => m.text), ["over http"]);
  });

  test("test_client_sse_own_message_on_stream_before_post_reply_emitted_once", async () => {
    const http = fakeFetch();
    let releaseReply = () => {};
    const fetch = async (url, init) => {
      if (init.method === "POST" && new URL(url).pathname.startsWith("/api/")) {
        await new Promise((resolve) => { releaseReply = resolve; });
      }
      return http.fetch(url, init);
    };
    const { client, of } = makeClient({ transport: "sse", fetch });
    client.connect();
    await until(() => FakeEventSource.all.length === 1);
    const es = FakeEventSource.all[0];
    es.receive({ type: "welcome", user: "alice", recovered: null, heartbeat: 15 });
    const sent = client.send("race");
    await new Promise((resolve) => setTimeout(resolve, 5));
    es.receive({ type: "chat", text: "race", id: "e-101", sender: "alice" }); // the stream wins
    releaseReply();
    assert.equal((await sent).id, "e-101");
    assert.deepEqual(of("message").map((m) => m.id), ["e-101"]);
  });

  test("test_client_sse_post_sends_one_idempotency_key_kept_on_the_token_retry", async () => {
    // A POST retried after a 401 (a fresh token) carries the same Idempotency-Key, so the hub
    // delivers the text once even if the first attempt was not a plain refusal.
    const http = fakeFetch();
    const keys = [];
    let refusals = 0;
    const fetch = async (url, init) => {
      if (init.method === "POST" && new URL(url).pathname.startsWith("/api/")) {
        keys.push(init.headers["Idempotency-Key"]);
        if (refusals++ === 0) return json(401, { error: "unauthorized", detail: "token expired" });
      }
      return http.fetch(url, init);
    };
    const { client } = makeClient({ transport: "sse", fetch });
    client.connect();
    await until(() => FakeEventSource.all.length === 1);
    FakeEventSource.all[0].receive({ type: "welcome", user: "alice", recovered: null, heartbeat: 15 });
    await client.send("once");
    await client.send("twice");
    assert.equal(keys.length, 3);
    assert.ok(keys.every((key) => typeof key === "string" && key.length >= 16));
    assert.equal(keys[0], keys[1], "the retry keeps the key");
    assert.notEqual(keys[1], keys[2], "another send, another key");
  });

  test("test_client_sse_error_closes_source_and_reconnects_with_fresh_ticket", async () => {
    const { client } = makeClient({ transport: "sse" });
    client.connect();
    await until(() => FakeEventSource.all.length === 1);
    const first = FakeEventSource.all[0];
    first.receive({ type: "welcome", recovered: null, heartbeat: 15 });
    first.receive({ type: "chat", text: "x", id: "e-9" });
    first.fail();
    assert.equal(first.closed, true, "no automatic reconnect with a used ticket");
    await until(() => FakeEventSource.all.length === 2);
    assert.equal(FakeEventSource.all[1].url.searchParams.get("last_event_id"), "e-9");
    assert.equal(FakeEventSource.all[1].url.searchParams.get("ticket"), "t2");
  });

  test("test_client_websocket_only_never_falls_back", async () => {
    const { client } = makeClient({ transport: "websocket" });
    client.connect();
    for (let n = 1; n <= 3; n++) {
      await until(() => FakeWebSocket.all.length === n);
      FakeWebSocket.all[n - 1].serverClose(1006);
    }
    await until(() => FakeWebSocket.all.length === 4);
    assert.equal(FakeEventSource.all.length, 0);
  });

  test("test_client_server_code_before_welcome_does_not_count_toward_fallback", async () => {
    const { client } = makeClient();
    client.connect();
    for (let n = 1; n <= 3; n++) {
      await until(() => FakeWebSocket.all.length === n);
      FakeWebSocket.all[n - 1].serverClose(1013, "backend down");
    }
    await until(() => FakeWebSocket.all.length === 4);
    assert.equal(FakeEventSource.all.length, 0);
  });

  test("test_client_refused_before_upgrade_probes_http_and_stops", async () => {
    // The hub answers 403 before the upgrade; the browser only reports 1006.
    const http = fakeFetch();
    const fetch = async (url, init) => {
      if (init.method === "GET") return json(403, { error: "forbidden", detail: "not your room" });
      return http.fetch(url, init);
    };
    const { client, of } = makeClient({ fetch });
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    FakeWebSocket.all[0].serverClose(1006);
    await until(() => client.state === "closed", "a stop");
    assert.equal(of("error").at(-1).code, "forbidden");
    assert.equal(FakeEventSource.all.length, 0, "no fallback for a refusal");
  });

  test("test_client_sse_refused_stream_probes_http_and_stops", async () => {
    const http = fakeFetch();
    const fetch = async (url, init) => {
      if (init.method === "GET") return json(403, { error: "forbidden", detail: "not your room" });
      return http.fetch(url, init);
    };
    const { client } = makeClient({ fetch, transport: "sse" });
    client.connect();
    await until(() => FakeEventSource.all.length === 1);
    FakeEventSource.all[0].fail();
    await until(() => client.state === "closed", "a stop");
  });

  test("test_client_4403_stops_with_error", async () => {
    const { client, of } = makeClient();
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    const queued = client.send("never");
    FakeWebSocket.all[0].serverClose(4403, "room not allowed");
    await assert.rejects(queued, { code: "forbidden" });
    assert.equal(client.state, "closed");
    assert.equal(client.transport, null);
    assert.deepEqual(of("error"), [{ code: "forbidden", detail: "room not allowed", status: undefined, closeCode: 4403 }]);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(FakeWebSocket.all.length, 1, "no reconnect");
  });

  test("test_client_4401_fetches_fresh_token_and_reconnects", async () => {
    const { client, tokens, http } = makeClient({ minDelayMs: 10000, maxDelayMs: 10000 });
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    FakeWebSocket.all[0].welcome();
    FakeWebSocket.all[0].serverClose(4401, "token expired");
    // With a 10 s backoff, a second socket this soon means "at once".
    await until(() => FakeWebSocket.all.length === 2, "an immediate reconnect");
    assert.deepEqual(tokens, ["jwt1", "jwt2"]);
    assert.equal(http.calls[1].auth, "Bearer jwt2");
  });

  test("test_client_send_resolves_on_ack_and_rejects_on_error_frame", async () => {
    const { client, of } = makeClient();
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    ws.welcome();
    const first = client.send("hello", "my-ref");
    const second = client.send("again");
    assert.deepEqual(ws.sent[0], { type: "chat", text: "hello", ref: "my-ref" });
    assert.equal(typeof ws.sent[1].ref, "string");
    ws.receive({ type: "ack", id: "e-4", ref: "my-ref" });
    ws.receive({ type: "error", code: "rate_limited", detail: "slow down" });
    assert.deepEqual(await first, { type: "ack", id: "e-4", ref: "my-ref" });
    await assert.rejects(second, (err) => err instanceof HubbubError && err.code === "rate_limited");
    // Our own message shows in the timeline once, built from the ack...
    assert.deepEqual(of("message").map((m) => [m.id, m.text, m.sender]), [["e-4", "hello", "alice"]]);
    // ...and a later replay of it (after a reconnect) is dropped.
    ws.receive({ type: "chat", text: "hello", id: "e-4" });
    assert.equal(of("message").length, 1);
  });

  test("test_client_queues_while_disconnected_and_rejects_beyond_max_queue", async () => {
    const { client } = makeClient({ maxQueue: 2 });
    client.connect();
    const a = client.send("a");
    const b = client.send("b");
    await assert.rejects(client.send("c"), { code: "queue_full" });
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    assert.equal(ws.sent.length, 0);
    ws.welcome();
    assert.deepEqual(ws.sent.map((f) => f.text), ["a", "b"]);
    ws.receive({ type: "ack", id: "e-1", ref: ws.sent[0].ref });
    ws.receive({ type: "ack", id: "e-2", ref: ws.sent[1].ref });
    assert.equal((await a).id, "e-1");
    assert.equal((await b).id, "e-2");
  });

  test("test_client_drop_rejects_unacknowledged_sends", async () => {
    const { client } = makeClient();
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    FakeWebSocket.all[0].welcome();
    const pending = client.send("lost?");
    FakeWebSocket.all[0].serverClose(1006);
    await assert.rejects(pending, { code: "disconnected" });
  });

  test("test_client_reconnect_without_cursor_emits_resync", async () => {
    const { client, of } = makeClient();
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    FakeWebSocket.all[0].welcome();
    FakeWebSocket.all[0].serverClose(1012);
    await until(() => FakeWebSocket.all.length === 2);
    FakeWebSocket.all[1].welcome({ recovered: null });
    assert.deepEqual(of("resync"), [{ type: "resync", reason: "no_cursor" }]);
  });

  test("test_client_server_resync_frame_is_an_event_not_a_message", async () => {
    const { client, of } = makeClient({ since: "old-3" });
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    ws.welcome({ recovered: false });
    ws.receive({ type: "resync" });
    ws.receive({ type: "join", sender: "bob" });
    ws.receive({ type: "join", sender: "bob" });
    ws.receive({ type: "chat", text: "fresh", id: "new-1" });
    assert.deepEqual(of("resync"), [{ type: "resync" }]);
    assert.deepEqual(of("message").map((m) => m.type), ["join", "join", "chat"], "frames without id never deduped");
  });

  test("test_client_notifications_channel_urls_and_no_send", async () => {
    const { client } = makeClient({ channel: { notifications: true }, transport: "sse", since: "e-1" });
    await assert.rejects(client.send("x"), { code: "not_a_room" });
    client.connect();
    await until(() => FakeEventSource.all.length === 1);
    const { url } = FakeEventSource.all[0];
    assert.equal(url.pathname, "/sse/notifications");
    assert.equal(url.searchParams.get("room"), null);
    assert.equal(url.searchParams.get("last_event_id"), "e-1");
  });

  test("test_client_quiet_websocket_pings_then_reconnects", async () => {
    // Every timer of this client is a mocked one (a real one cleared by a mocked
    // clearTimeout would linger), so wait on setImmediate, which stays real.
    mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"] });
    const settle = async (check) => {
      for (let i = 0; i < 1000 && !check(); i++) await new Promise((resolve) => setImmediate(resolve));
      assert.ok(check());
    };
    const { client } = makeClient();
    client.connect();
    try {
      await settle(() => FakeWebSocket.all.length === 1);
      const ws = FakeWebSocket.all[0];
      ws.welcome({ heartbeat: 15 });
      mock.timers.tick(15000);
      assert.deepEqual(ws.sent, [{ type: "ping" }], "a ping once the line is quiet for a heartbeat");
      ws.receive({ type: "pong" });
      mock.timers.tick(30000);
      assert.equal(ws.closedWith, null, "the pong kept it alive");
      mock.timers.tick(15000); // 45 s without a frame: more than 2 heartbeats + 5 s
      assert.equal(ws.closedWith, 4000);
      assert.equal(client.state, "reconnecting");
      mock.timers.tick(10); // the (tiny) backoff
      await settle(() => FakeWebSocket.all.length === 2);
    } finally {
      client.close();
      mock.timers.reset();
    }
  });

  test("test_client_silent_event_stream_is_dropped_after_two_heartbeats", async () => {
    mock.timers.enable({ apis: ["setTimeout", "setInterval", "Date"] });
    const settle = async (check) => {
      for (let i = 0; i < 1000 && !check(); i++) await new Promise((resolve) => setImmediate(resolve));
      assert.ok(check());
    };
    const { client } = makeClient({ transport: "sse" });
    client.connect();
    try {
      await settle(() => FakeEventSource.all.length === 1);
      const es = FakeEventSource.all[0];
      assert.equal(es.url.searchParams.get("heartbeat"), "1", "asks for heartbeats it can see");
      es.receive({ type: "welcome", user: "alice", recovered: null, heartbeat: 15 });
      mock.timers.tick(15000);
      es.receive({ type: "ping" });
      mock.timers.tick(30000);
      assert.equal(es.closed, false, "the ping kept it alive");
      mock.timers.tick(7500); // 37.5 s since the ping: past 2 heartbeats + 2 s
      assert.equal(es.closed, true);
      assert.equal(client.state, "reconnecting");
      mock.timers.tick(10);
      await settle(() => FakeEventSource.all.length === 2);
      assert.deepEqual(FakeEventSource.all[1].url.searchParams.get("heartbeat"), "1");
    } finally {
      client.close();
      mock.timers.reset();
    }
  });

  test("test_client_ping_frames_are_not_messages", async () => {
    const { client, of } = makeClient({ transport: "sse" });
    client.connect();
    await until(() => FakeEventSource.all.length === 1);
    FakeEventSource.all[0].receive({ type: "welcome", user: "alice", recovered: null, heartbeat: 15 });
    FakeEventSource.all[0].receive({ type: "ping" });
    assert.deepEqual(of("message"), []);
  });

  test("test_client_rejects_bad_options", () => {
    const getToken = async () => "t";
    assert.throws(() => new Hubbub({ baseUrl: "http://x", getToken, channel: { room: "no spaces" } }), TypeError);
    assert.throws(() => new Hubbub({ baseUrl: "http://x", getToken, channel: /** @type {any} */ ({}) }), TypeError);
    assert.throws(() => new Hubbub(/** @type {any} */ ({ baseUrl: "http://x", getToken: "t", channel: { room: "a" } })),
      TypeError);
    assert.throws(() => new Hubbub({ getToken, channel: { room: "a" } }), /baseUrl/, "no location in Node");
  });

  test("test_client_without_get_token_signs_in_by_cookie_no_authorization_header", async () => {
    // The host app's own login (a session cookie, read by hubbub's authenticate hook):
    // the client sends no Authorization header, and the browser sends the cookie.
    const { client, http } = makeClient({ getToken: undefined });
    client.connect();
    await until(() => http.calls.length > 0, "the ticket request");
    assert.equal(http.calls[0].pathname, "/auth/ticket");
    assert.equal(http.calls[0].auth, undefined);
  });

  test("test_client_close_stops_and_rejects_queued", async () => {
    const { client, of } = makeClient();
    client.connect();
    const queued = client.send("x");
    client.close();
    await assert.rejects(queued, { code: "closed" });
    assert.equal(client.state, "closed");
    assert.deepEqual(of("error"), [], "closing on purpose is not an error");
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(FakeWebSocket.all.length, 0, "the pending attempt was abandoned");
  });

  test("test_client_ticket_401_refreshes_then_backs_off", async () => {
    let calls = 0;
    const fetch = async () => {
      calls += 1;
      return json(401, { error: "unauthorized", detail: "token expired" });
    };
    const { client, of } = makeClient({ fetch });
    client.connect();
    await until(() => calls >= 3, "retries");
    assert.equal(of("error")[0].code, "unauthorized");
    assert.notEqual(client.state, "closed");
  });

  test("test_client_refused_token_asks_get_token_for_a_fresh_one", async () => {
    // A restarted server without JWT_SECRET has a new secret: a cached token is worthless,
    // and getToken() is told so, instead of handing the same one back forever.
    const contexts = [];
    let calls = 0;
    const http = fakeFetch();
    const fetch = async (url, init) => {
      if (++calls === 1) return json(401, { error: "unauthorized", detail: "bad signature" });
      return http.fetch(url, init);
    };
    const { client } = makeClient({
      fetch, getToken: async (context) => { contexts.push(context); return "jwt"; },
    });
    client.connect();
    await until(() => FakeWebSocket.all.length === 1, "a connection after the refusal");
    assert.deepEqual(contexts.slice(0, 2), [{ refresh: false }, { refresh: true }]);
    FakeWebSocket.all[0].serverClose(4401, "token expired");
    await until(() => contexts.length >= 3, "the next token");
    assert.deepEqual(contexts.at(-1), { refresh: true });
  });
});

describe("many channels on one connection", () => {
  const multi = (options = {}) => makeClient({ channel: undefined, channels: ["room:lobby", "notifications"], ...options });

  test("test_multi_client_opens_one_connection_for_its_set_and_routes_by_channel", async () => {
    const { client, of } = multi();
    const lobby = client.subscribe("room:lobby");
    const notes = client.subscribe("notifications");
    const got = { lobby: [], notes: [] };
    lobby.addEventListener("message", (e) => got.lobby.push(e.detail.id));
    notes.addEventListener("message", (e) => got.notes.push(e.detail.id));
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    assert.equal(ws.url.pathname, "/ws");
    assert.equal(ws.url.searchParams.get("channels"), "room:lobby,notifications");
    ws.welcome({ channel: undefined, channels: ["room:lobby", "notifications"] });
    assert.deepEqual(ws.sent, [], "the welcome matched: no frames");
    ws.receive({ type: "chat", id: "e-1", channel: "room:lobby", text: "a" });
    ws.receive({ type: "notification", id: "e-2", channel: "user:alice", data: 1 });
    ws.receive({ type: "notification", id: "e-3", channel: "broadcast", data: 2 });
    ws.receive({ type: "chat", id: "e-3", channel: "room:lobby", text: "repeat" });
    assert.deepEqual(got, { lobby: ["e-1"], notes: ["e-2", "e-3"] });
    assert.deepEqual(of("message").map((m) => m.id), ["e-1", "e-2", "e-3"]);
    assert.equal(client.lastId, "e-3", "one cursor for the set");
  });

  test("test_multi_client_changes_the_set_with_frames_on_websocket", async () => {
    const { client } = multi();
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    ws.welcome({ channel: undefined, channels: ["room:lobby", "notifications"] });
    const ops = client.subscribe("room:ops");
    const confirmed = [];
    ops.addEventListener("subscribed", (e) => confirmed.push(e.detail.channel));
    assert.deepEqual(ws.sent.at(-1), { type: "subscribe", channel: "room:ops", ref: ws.sent.at(-1).ref });
    ws.receive({ type: "subscribed", channel: "room:ops", ref: ws.sent.at(-1).ref });
    assert.deepEqual(confirmed, ["room:ops"]);
    const sent = ops.send("hi ops");
    assert.deepEqual(ws.sent.at(-1), { type: "chat", channel: "room:ops", text: "hi ops", ref: ws.sent.at(-1).ref });
    ws.receive({ type: "ack", id: "e-9", ref: ws.sent.at(-1).ref });
    assert.equal((await sent).id, "e-9");
    ops.unsubscribe();
    assert.equal(ws.sent.at(-1).type, "unsubscribe");
    assert.deepEqual(client.channels, ["room:lobby", "notifications"]);
    assert.equal(FakeWebSocket.all.length, 1, "the same connection throughout");
  });

  test("test_a_refused_subscribe_leaves_the_set_and_no_send_is_failed_for_it", async () => {
    const { client, of } = multi();
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    ws.welcome({ channel: undefined, channels: ["room:lobby", "notifications"] });
    const pending = client.subscribe("room:lobby").send("waiting for its ack");
    const chatRef = ws.sent.at(-1).ref;
    const secret = client.subscribe("room:secret");
    const errors = [];
    secret.addEventListener("error", (e) => errors.push(e.detail.code));
    ws.receive({ type: "error", code: "forbidden", detail: "no", ref: ws.sent.at(-1).ref });
    assert.deepEqual(errors, ["forbidden"]);
    assert.deepEqual(client.channels, ["room:lobby", "notifications"]);
    assert.equal(of("error").at(-1).channel, "room:secret");
    ws.receive({ type: "ack", id: "e-5", ref: chatRef });
    assert.equal((await pending).id, "e-5", "the chat send was not taken for the subscribe");
  });

  test("test_multi_client_on_sse_reopens_once_with_the_new_set_and_the_cursor", async () => {
    const { client } = multi({ transport: "sse" });
    client.connect();
    await until(() => FakeEventSource.all.length === 1);
    const first = FakeEventSource.all[0];
    assert.equal(first.url.pathname, "/sse");
    first.receive({ type: "welcome", channels: ["room:lobby", "notifications"], user: "alice", recovered: null, heartbeat: 15 });
    first.receive({ type: "chat", id: "e-4", channel: "room:lobby", text: "x" });
    client.subscribe("room:a");
    client.subscribe("room:b");
    await until(() => FakeEventSource.all.length === 2, "a second stream");
    assert.ok(first.closed);
    const second = FakeEventSource.all[1];
    assert.equal(second.url.searchParams.get("channels"), "room:lobby,notifications,room:a,room:b");
    assert.equal(second.url.searchParams.get("last_event_id"), "e-4");
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(FakeEventSource.all.length, 2, "one reconnect for both changes");
  });

  test("test_a_subscribe_made_while_connecting_is_sent_after_the_welcome", async () => {
    const { client } = multi();
    client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    client.subscribe("room:late");
    ws.welcome({ channel: undefined, channels: ["room:lobby", "notifications"] });
    assert.deepEqual(ws.sent.map((f) => [f.type, f.channel]), [["subscribe", "room:late"]]);
  });

  test("test_subscribe_checks_names_and_needs_a_multi_client", () => {
    const { client } = multi();
    assert.throws(() => client.subscribe("lobby"), /room:NAME/);
    assert.throws(() => makeClient().client.subscribe("room:lobby"), /without `channel`/);
  });
});

/** Web Locks for one lock name, granted in request order (navigator.locks in a browser). */
class FakeLocks {
  queue = [];
  held = null;

  request(name, options, callback) {
    return new Promise((resolve, reject) => {
      const entry = { callback, resolve };
      options.signal?.addEventListener("abort", () => {
        const at = this.queue.indexOf(entry);
        if (at !== -1) this.queue.splice(at, 1);
        if (at !== -1) reject(new Error("AbortError"));
      });
      this.queue.push(entry);
      this.grant(name);
    });
  }

  grant(name) {
    if (this.held || this.queue.length === 0) return;
    const entry = (this.held = this.queue.shift());
    Promise.resolve(entry.callback({ name })).then((value) => {
      this.held = null;
      entry.resolve(value);
      this.grant(name);
    });
  }
}

describe("tabs sharing one connection", () => {
  const tab = (locks, channels) => makeClient({ channel: undefined, channels, shareTabs: "alice", locks });
  const welcomeFor = (ws) => ws.welcome({ channel: undefined, channels: ws.url.searchParams.get("channels").split(",") });
  const carried = (ws) => new Set([...ws.url.searchParams.get("channels").split(","),
    ...ws.sent.filter((f) => f.type === "subscribe").map((f) => f.channel)]);

  test("test_three_tabs_one_socket_every_tab_gets_its_channels_and_posts_its_sends", async () => {
    const locks = new FakeLocks();
    const a = tab(locks, ["room:lobby"]);
    const b = tab(locks, ["notifications"]);
    const c = tab(locks, ["room:ops"]);
    for (const t of [a, b, c]) t.client.connect();
    await until(() => FakeWebSocket.all.length === 1, "the leader's socket");
    const ws = FakeWebSocket.all[0];
    welcomeFor(ws);
    await until(() => ["room:lobby", "notifications", "room:ops"].every((n) => carried(ws).has(n)), "every tab's channels");
    await until(() => b.client.state === "open" && c.client.state === "open", "followers open");

    const got = { b: [], c: [] };
    b.client.subscribe("notifications").addEventListener("message", (e) => got.b.push(e.detail.id));
    c.client.subscribe("room:ops").addEventListener("message", (e) => got.c.push(e.detail.id));
    ws.receive({ type: "notification", id: "e-1", channel: "user:alice", data: 1 });
    ws.receive({ type: "chat", id: "e-2", channel: "room:ops", text: "x" });
    await until(() => got.b.length === 1 && got.c.length === 1, "relayed messages");
    assert.deepEqual(got, { b: ["e-1"], c: ["e-2"] });
    assert.equal(c.client.lastId, "e-2");

    const ack = await c.client.subscribe("room:ops").send("from a follower");
    assert.equal(c.http.calls.at(-1).pathname, "/api/rooms/ops/messages", "a follower posts");
    assert.ok(ack.id);
    assert.equal(FakeWebSocket.all.length, 1, "one socket for the three tabs");
  });

  test("test_a_tab_opened_after_the_leader_was_welcomed_follows_at_once", async () => {
    const locks = new FakeLocks();
    const a = tab(locks, ["room:lobby"]);
    a.client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    welcomeFor(FakeWebSocket.all[0]);
    const late = tab(locks, ["room:ops"]);
    late.client.connect();
    await until(() => late.client.state === "open", "the late tab open");
    assert.equal(late.client.user, "alice");
    await until(() => carried(FakeWebSocket.all[0]).has("room:ops"), "its channel added to the socket");
    assert.equal(FakeWebSocket.all.length, 1);
  });

  test("test_when_the_leader_closes_the_next_tab_resumes_from_its_last_id", async () => {
    const locks = new FakeLocks();
    const a = tab(locks, ["room:lobby"]);
    const b = tab(locks, ["room:lobby"]);
    a.client.connect();
    b.client.connect();
    await until(() => FakeWebSocket.all.length === 1);
    const first = FakeWebSocket.all[0];
    welcomeFor(first);
    first.receive({ type: "chat", id: "e-1", channel: "room:lobby", text: "one" });
    await until(() => b.client.lastId === "e-1", "the follower saw e-1");
    a.client.close();
    await until(() => FakeWebSocket.all.length === 2, "the new leader's socket");
    const second = FakeWebSocket.all[1];
    assert.equal(second.url.searchParams.get("since"), "e-1");
    welcomeFor(second);
    second.receive({ type: "chat", id: "e-1", channel: "room:lobby", text: "one" });
    second.receive({ type: "chat", id: "e-2", channel: "room:lobby", text: "two" });
    assert.deepEqual(b.of("message").map((m) => m.id), ["e-1", "e-2"], "nothing lost or doubled");
    assert.equal(b.client.state, "open");
  });
});
