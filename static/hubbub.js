// @ts-check
/**
 * hubbub browser client: one connection for a room, the user's notifications, or (made
 * without `channel`) any set of them through subscribe(), over WebSocket, falling back to
 * Server-Sent Events + HTTP POST. It reconnects with
 * full-jitter backoff, resumes from the last id it saw and drops duplicates, so a
 * drop or a change of transport loses and repeats nothing. Contract: API.md;
 * guide: docs/client.md. No dependencies, no build step; imports cleanly in Node.
 */

// Close codes, error codes and frame types: the same file the server reads.
import PROTOCOL from "./protocol.json" with { type: "json" };

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/** @typedef {"connecting" | "open" | "reconnecting" | "closed"} State */
/** @typedef {"websocket" | "sse"} Transport */
/** @typedef {"stop" | "refresh" | "retry"} CloseAction */
/** @typedef {{ room: string } | { notifications: true }} Channel */
/** @typedef {`room:${string}` | "notifications"} ChannelName  a channel of a multi-channel client */
/** @typedef {{ type: string, id?: string, [field: string]: unknown }} Frame */
/** @typedef {Frame} Message  chat, notification, join, leave: what a `message` event carries */
/** @typedef {{ type: "ack", id: string, ref: string }} Ack */
/** @typedef {{ messages: Frame[], recovered: boolean }} History */
/**
 * @typedef {object} HubbubOptions
 * @property {Channel} [channel]  one room or the notifications, on /ws/chat, /ws/notifications, …;
 *   leave it out for one connection carrying any set of channels (`channels`, subscribe())
 * @property {ChannelName[]} [channels]  without `channel`: the names to start with; more with subscribe()
 * @property {(context: { refresh: boolean }) => string | Promise<string>} [getToken]  called before
 *   every (re)connect and POST; must return a currently valid token. `refresh` is true when the
 *   hub refused the last one (expired, or signed with a secret it no longer has): never hand
 *   back a cached token then. Omit it when the host app signs users in with its own session
 *   cookie (hubbub's `authenticate` hook)
 * @property {string} [baseUrl]  the hub's origin (and path prefix, if any); default location.origin
 * @property {"auto" | Transport} [transport]  default "auto": WebSocket, SSE when it is blocked
 * @property {string | null} [since]  resume from this id (e.g. one kept in sessionStorage)
 * @property {number} [minDelayMs]  the shortest wait before a retry, and the backoff's base, default 500
 * @property {number} [maxDelayMs]  backoff cap, default 20000
 * @property {number} [maxQueue]  sends kept while disconnected, default 100
 * @property {number} [maxMessageBytes]  refuse bigger chat frames locally (the server closes 1009), default 65536
 * @property {string} [shareTabs]  a client of many channels: tabs of this origin that give the same
 *   key (the user's id) share one connection; one tab leads, the others follow (see TabGroup)
 * @property {typeof WebSocket} [WebSocket]  implementation to use (tests, Node); default the global
 * @property {typeof EventSource} [EventSource]  implementation to use; default the global
 * @property {typeof fetch} [fetch]  implementation to use; default the global
 * @property {typeof BroadcastChannel} [BroadcastChannel]  implementation to use (shareTabs); default the global
 * @property {LockManager} [locks]  Web Locks to use (shareTabs); default navigator.locks
 */
/**
 * @typedef {object} Outgoing  one send() waiting for its ack
 * @property {string} text
 * @property {string} ref
 * @property {string} room
 * @property {(ack: Ack) => void} resolve
 * @property {(error: HubbubError) => void} reject
 */
/** @typedef {{ send(text: string): void, close(code?: number, reason?: string): void }} Connection */
/** @typedef {{ data(text: string): void, close(code: number, reason: string): void }} ConnectionEvents */

// ---------------------------------------------------------------------------
// The protocol's tables: protocol.json, the file the server reads too
// ---------------------------------------------------------------------------

/**
 * WebSocket close codes and what a client does about each. Codes not listed
 * (1001, 1005, 1006, ...) are network or browser failures: retry with backoff.
 * 1000 only ends a session on purpose (the server has its own code for every
 * reason it wants a client back), so the client stays away.
 */
export const CLOSE_CODES = /** @type {Readonly<Record<number, { name: string, action: CloseAction }>>} */ (
  Object.freeze(Object.fromEntries(
    Object.entries(PROTOCOL.close_codes).map(([code, entry]) => [Number(code), Object.freeze(entry)]),
  ))
);

/** HTTP error codes of the hub (`{"error": CODE}`) and their statuses. @type {Readonly<Record<string, number>>} */
export const ERROR_CODES = Object.freeze({ ...PROTOCOL.errors });

/**
 * What to do after a close. The hub's 44xx codes are 4000 + the HTTP status,
 * so `closeAction(4000 + status)` classifies an HTTP failure the same way.
 * @param {number} code
 * @returns {CloseAction}
 */
export function closeAction(code) {
  return CLOSE_CODES[code]?.action ?? "retry";
}

// ---------------------------------------------------------------------------
// Pure helpers
// ---------------------------------------------------------------------------

/** A fresh Idempotency-Key (crypto.randomUUID needs a secure context; plain http falls back). */
function idempotencyKey() {
  if (globalThis.crypto?.randomUUID) return globalThis.crypto.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
}

/**
 * Reconnect delay: a floor of `minMs`, plus jitter uniform in [0, min(maxMs, minMs * 2^step)),
 * capped at `maxMs` (centrifuge-js utils.ts backoff()). The jitter spreads the clients of a
 * restarted server over the whole window instead of bringing them back in waves; the floor
 * keeps a client from hammering a server that just refused it.
 * @param {number} step  0 for the first retry
 * @param {number} [minMs]
 * @param {number} [maxMs]
 * @param {() => number} [random]  a source in [0, 1); tests pass their own
 * @returns {number} milliseconds
 */
export function backoff(step, minMs = 500, maxMs = 20000, random = Math.random) {
  const jitter = Math.min(maxMs, minMs * 2 ** Math.min(Math.max(step, 0), 16));
  return Math.min(maxMs, minMs + Math.floor(random() * jitter));
}

/**
 * Splits an id "EPOCH-SEQ" (the epoch may itself contain "-"); null for an id
 * of another shape, which is then treated as opaque.
 * @param {string} id
 * @returns {{ epoch: string, seq: number } | null}
 */
export function parseId(id) {
  const dash = id.lastIndexOf("-");
  const digits = id.slice(dash + 1);
  if (dash < 1 || !/^\d{1,15}$/.test(digits)) return null;
  return { epoch: id.slice(0, dash), seq: Number(digits) };
}

/**
 * Recognises messages already delivered. Within one epoch ids strictly increase,
 * so any id at or below the last one is a repeat (a replay overlapping what was
 * seen live); a new epoch means history restarted and the count starts again.
 * The last `limit` ids are also remembered one by one: that covers opaque ids and
 * ids this client learnt from its own acks before the stream delivered them.
 */
export class Dedupe {
  /** @type {Set<string>} */ #ids = new Set();
  #limit;
  /** @type {string | null} */ #epoch = null;
  #seq = -1;
  /** @type {string | null} */ #last = null;

  /** @param {number} [limit] how many ids to remember one by one */
  constructor(limit = 1000) {
    this.#limit = Math.max(1, limit);
  }

  /** The id of the newest message delivered: the cursor to resume from. */
  get last() {
    return this.#last;
  }

  /**
   * True when `id` was delivered (or remembered) before; otherwise records it.
   * @param {string} id
   */
  seen(id) {
    const parsed = parseId(id);
    if (parsed && parsed.epoch === this.#epoch && parsed.seq <= this.#seq) return true;
    const known = this.#ids.has(id);
    this.#advance(id, parsed);
    this.#remember(id);
    return known;
  }

  /**
   * Records an id without moving the cursor: this client's own message, known
   * from its ack, whose copy (if any) may still be on its way. True if known already.
   * @param {string} id
   */
  remember(id) {
    const known = this.#ids.has(id);
    this.#remember(id);
    return known;
  }

  /** @param {string} id @param {{ epoch: string, seq: number } | null} parsed */
  #advance(id, parsed) {
    this.#last = id;
    if (parsed) {
      this.#epoch = parsed.epoch;
      this.#seq = parsed.seq;
    }
  }

  /** @param {string} id */
  #remember(id) {
    this.#ids.delete(id);
    this.#ids.add(id);
    if (this.#ids.size > this.#limit) {
      const oldest = this.#ids.values().next().value;
      if (oldest !== undefined) this.#ids.delete(oldest);
    }
  }
}

/** An error with the hub's code (ERROR_CODES) or one of the client's own. */
export class HubbubError extends Error {
  /**
   * @param {string} code  e.g. "rate_limited", or the client's "queue_full", "closed", "disconnected", "network"
   * @param {string} detail
   * @param {{ status?: number, closeCode?: number, retryAfterMs?: number }} [extra]
   */
  constructor(code, detail, extra = {}) {
    super(`${code}: ${detail}`);
    this.name = "HubbubError";
    this.code = code;
    this.detail = detail;
    this.status = extra.status;
    this.closeCode = extra.closeCode;
    this.retryAfterMs = extra.retryAfterMs;
  }
}

// ---------------------------------------------------------------------------
// Transports: thin adapters that only open, send, report data and close
// ---------------------------------------------------------------------------

/** Reported when a connection never got going (blocked, bad URL, network). */
const ABNORMAL = 1006;

/**
 * @param {typeof WebSocket} Impl @param {string} url @param {ConnectionEvents} on
 * @returns {Connection}
 */
function openWebSocket(Impl, url, on) {
  const ws = new Impl(url);
  ws.onmessage = (event) => {
    if (typeof event.data === "string") on.data(event.data);
  };
  ws.onclose = (event) => on.close(event.code, event.reason);
  return {
    send: (text) => ws.send(text),
    close(code = 1000, reason = "") {
      ws.onmessage = ws.onclose = null; // our caller already knows; no echo of its own close
      ws.close(code, reason);
    },
  };
}

/**
 * EventSource reconnects by itself with the same URL, but the ticket in that URL
 * is single-use: so any error closes it, and the client comes back itself with a
 * fresh ticket and the last id.
 * @param {typeof EventSource} Impl @param {string} url @param {ConnectionEvents} on
 * @returns {Connection}
 */
function openEventSource(Impl, url, on) {
  const source = new Impl(url);
  const detach = () => {
    source.onmessage = source.onerror = null;
    source.close();
  };
  source.onmessage = (event) => on.data(event.data);
  source.onerror = () => {
    detach();
    on.close(ABNORMAL, "event stream failed or ended");
  };
  return {
    send() {
      throw new HubbubError("bad_request", "an event stream is receive-only");
    },
    close: detach,
  };
}

// ---------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------

const ROOM_NAME = /^[A-Za-z0-9_.-]{1,64}$/; // API.md "Channels"
const STABLE_MS = 5000; // the attempt counter resets only after this long open
const WELCOME_TIMEOUT_MS = 10000; // a proxy that upgrades but forwards nothing is a failure too
const WS_FAILURES_BEFORE_SSE = 2;
// After 1012 the retry is spread over this window (after minDelayMs), not over the backoff's: a restarting
// process's clients should not all reach its successor within the same half second (API.md).
const RESTART_SPREAD_MS = 5000;
const SILENCE_CLOSE = 4000; // our own close for a connection gone quiet: not a server code, so "retry"
const LIVENESS_SLACK_MS = 2000; // past two heartbeats: a slow network is not a dead one
const REQUEST_TIMEOUT_MS = 10000; // an HTTP request (ticket, POST, history) that long unanswered failed
const TRANSPORTS = ["auto", "websocket", "sse"];

export class Hubbub extends EventTarget {
  #o; // settled options
  /** @type {string | null} */ #room; // the one room of a `channel: {room}` client
  /** @type {Map<ChannelName, Subscription> | null} */ #subs = null; // a client made without `channel`
  /** @type {Map<string, ChannelName>} */ #changes = new Map(); // subscribe/unsubscribe frames awaiting a reply, by ref
  #reopening = false;
  /** @type {TabGroup | null} */ #tabs = null; // shareTabs: the tabs sharing this connection
  #leading = true; // this tab holds the connection (always, without shareTabs)
  /** @type {Frame | null} */ #welcome = null; // the current connection's, for tabs that arrive later
  /** @type {Map<string, ChannelName[]>} */ #peers = new Map(); // the other tabs' channels, by tab
  /** @type {State} */ #state = "closed";
  /** @type {Transport | null} */ #transport = null;
  /** @type {Connection | null} */ #conn = null;
  #stopped = true;
  #generation = 0; // bumped per attempt, probe and stop, so a late await can tell it is stale
  #attempt = 0;
  #wsFailures = 0; // WebSocket attempts in a row that failed before a welcome
  #sseForGood = false; // "auto" fell back; stays on SSE for this client's life
  #refreshStreak = 0; // token refusals (4401, 401) in a row: only the first retries at once
  #tokenRefused = false; // the last token was refused: getToken() is told to fetch a fresh one
  #everOpened = false;
  #welcomed = false;
  #openedAt = 0;
  #lastFrameAt = 0;
  #pingedAt = 0;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #retryTimer;
  /** @type {ReturnType<typeof setTimeout> | undefined} */ #welcomeTimer;
  /** @type {ReturnType<typeof setInterval> | undefined} */ #heartbeatTimer;
  #dedupe = new Dedupe();
  /** @type {string | null} */ #user = null;
  /** @type {Outgoing[]} */ #queue = [];
  /** @type {Outgoing[]} */ #inflight = [];
  /** @type {Promise<void>} */ #posts = Promise.resolve();
  #refs = 0;

  /** @param {HubbubOptions} options */
  constructor(options) {
    super();
    const { channel, channels, getToken = null, transport = "auto" } = options ?? {};
    if (getToken !== null && typeof getToken !== "function") {
      throw new TypeError("Hubbub: getToken must be a function returning a token (or be left out)");
    }
    if (!TRANSPORTS.includes(transport)) throw new TypeError(`Hubbub: transport must be one of ${TRANSPORTS.join(", ")}`);
    if (channel !== undefined && channels !== undefined) throw new TypeError("Hubbub: give channel or channels, not both");
    this.#room = channel === undefined ? null : roomOf(channel);
    if (channel === undefined) this.#subs = new Map();
    if (options.shareTabs !== undefined && (channel !== undefined || typeof options.shareTabs !== "string" || !options.shareTabs)) {
      throw new TypeError("Hubbub: shareTabs is a non-empty key (the user's id), for a client made without `channel`");
    }
    // `location` is read here, not at module top level, so Node can import this file.
    const baseUrl = options.baseUrl ?? (typeof location === "undefined" ? "" : location.origin);
    if (!baseUrl) throw new TypeError("Hubbub: baseUrl is required outside a browser");
    this.#o = {
      getToken,
      transport,
      baseUrl: baseUrl.replace(/\/+$/, ""),
      minDelayMs: options.minDelayMs ?? 500,
      maxDelayMs: options.maxDelayMs ?? 20000,
      maxQueue: options.maxQueue ?? 100,
      maxMessageBytes: options.maxMessageBytes ?? 65536,
      WebSocket: options.WebSocket ?? globalThis.WebSocket,
      EventSource: options.EventSource ?? globalThis.EventSource,
      /** @type {typeof fetch} */ fetch: options.fetch ?? ((input, init) => globalThis.fetch(input, init)),
      shareTabs: options.shareTabs ?? null,
      BroadcastChannel: options.BroadcastChannel ?? globalThis.BroadcastChannel,
      locks: options.locks ?? globalThis.navigator?.locks,
    };
    if (options.since) this.#dedupe.seen(options.since);
    for (const name of channels ?? []) this.subscribe(name);
  }

  /** "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this.#state;
  }

  /** The transport in use or being tried; null when closed. */
  get transport() {
    return this.#transport;
  }

  /** The id of the newest message delivered; the cursor the next connection resumes from. */
  get lastId() {
    return this.#dedupe.last;
  }

  /** The user id the server announced in its welcome. */
  get user() {
    return this.#user;
  }

  /** Starts (or, after close(), resumes) the subscription. Add listeners first. */
  connect() {
    if (!this.#stopped) return this;
    this.#stopped = false;
    this.#attempt = 0;
    this.#wsFailures = 0;
    this.#refreshStreak = 0;
    this.#listenForWake(true);
    const { shareTabs, BroadcastChannel, locks } = this.#o;
    if (shareTabs !== null && BroadcastChannel && locks) {
      this.#leading = false; // until this tab gets the lock
      this.#setState("connecting", null);
      const group = `hubbub:${this.#o.baseUrl}:${shareTabs}`;
      this.#tabs = new TabGroup(group, BroadcastChannel, locks, (data) => this.#onTab(data));
      this.#tabs.post({ kind: "channels", names: this.channels });
      this.#tabs.lead(() => this.#lead());
      return this;
    }
    void this.#open();
    return this;
  }

  /**
   * Posts a chat message to the room. Resolves with the ack once the hub stored it;
   * rejects with a HubbubError carrying the hub's code (e.g. "rate_limited").
   * While disconnected, up to maxQueue sends wait and go out in order on reconnect.
   * @param {string} text
   * @param {string} [ref]  echoed in the ack; generated when omitted
   * @returns {Promise<Ack>}
   */
  send(text, ref) {
    return this.#send(this.#room, text, ref);
  }

  /**
   * Adds a channel to this client's one connection (a client made without `channel`):
   * "room:NAME" or "notifications". Its messages come as "message" events on the returned
   * Subscription (and on the client). Over WebSocket the set changes on the open connection;
   * over SSE the client reconnects with the new set and resumes from its last id.
   * @param {ChannelName} name
   * @returns {Subscription}
   */
  subscribe(name) {
    if (this.#subs === null) throw new TypeError("Hubbub: subscribe() needs a client made without `channel`");
    checkName(name);
    let sub = this.#subs.get(name);
    if (sub) return sub;
    const room = name === "notifications" ? null : name.slice(5);
    sub = new Subscription(name, {
      send: (text, ref) => this.#send(room, text, ref),
      history: (query) => this.#history(room, query),
      unsubscribe: () => this.unsubscribe(name),
    });
    const before = this.#wanted();
    this.#subs.set(name, sub);
    this.#tabs?.post({ kind: "channels", names: this.channels });
    this.#channelsChanged(before);
    return sub;
  }

  /** Takes a channel out of the connection's set. @param {ChannelName} name */
  unsubscribe(name) {
    if (this.#subs === null || !this.#subs.has(name)) return;
    const before = this.#wanted();
    this.#subs.delete(name);
    this.#tabs?.post({ kind: "channels", names: this.channels });
    this.#channelsChanged(before);
  }

  /** The channels of this client's connection, subscribed or being subscribed. @returns {ChannelName[]} */
  get channels() {
    return this.#subs === null ? [] : [...this.#subs.keys()];
  }

  /** @param {string | null} room @param {string} text @param {string} [ref] @returns {Promise<Ack>} */
  #send(room, text, ref) {
    const frameRef = ref ?? `r${++this.#refs}`;
    const refusal = this.#refuse(room, text, frameRef);
    if (refusal) return Promise.reject(refusal);
    return new Promise((resolve, reject) => {
      const item = { text, ref: frameRef, room: /** @type {string} */ (room), resolve, reject };
      if (this.#state === "open") this.#dispatch(item);
      else if (this.#queue.length < this.#o.maxQueue) this.#queue.push(item);
      else reject(new HubbubError("queue_full", `${this.#o.maxQueue} messages already wait for a connection`));
    });
  }

  /**
   * The room's retained history, oldest first: with `since`, the first `limit`
   * after it; without, the latest `limit`. Pure: does not move the cursor.
   * @param {{ since?: string, limit?: number }} [query]
   * @returns {Promise<History>}
   */
  async history(query = {}) {
    return this.#history(this.#room, query);
  }

  /** @param {string | null} room @param {{ since?: string, limit?: number }} query @returns {Promise<History>} */
  async #history(room, { since, limit }) {
    const params = new URLSearchParams();
    if (since) params.set("since", since);
    if (limit !== undefined) params.set("limit", String(limit));
    const query = params.toString() ? `?${params}` : "";
    const reply = await this.#authorized("GET", `${roomPath(room, "history()")}/messages${query}`);
    return reply.json();
  }

  /** Ends the subscription; pending and queued sends reject with "closed". connect() resumes. */
  close() {
    this.#stop(new HubbubError("closed", "closed by the client"), false);
  }

  // --- connecting --------------------------------------------------------

  async #open() {
    const generation = ++this.#generation;
    const transport = this.#nextTransport();
    this.#setState(this.#state === "closed" ? "connecting" : "reconnecting", transport);
    let ticket;
    try {
      ticket = await this.#ticket();
    } catch (error) {
      if (generation === this.#generation && !this.#stopped) this.#onHttpFailure(asHubbubError(error));
      return;
    }
    if (generation !== this.#generation || this.#stopped) return;
    this.#connectWith(transport, ticket);
  }

  /** @param {Transport} transport @param {string} ticket */
  #connectWith(transport, ticket) {
    /** @type {Connection | null} */
    let conn = null;
    /** @type {ConnectionEvents} */
    const on = {
      data: (text) => conn === this.#conn && this.#onData(text),
      close: (code, reason) => conn === this.#conn && this.#onClose(code, reason),
    };
    const url = this.#streamUrl(transport, ticket);
    try {
      conn = transport === "websocket"
        ? openWebSocket(this.#o.WebSocket, url, on)
        : openEventSource(this.#o.EventSource, url, on);
    } catch (error) {
      // Blocked by a Content Security Policy, mixed content, a missing global:
      // a failure before opening, like a refused connection.
      this.#onClose(ABNORMAL, String(error));
      return;
    }
    this.#conn = conn;
    this.#lastFrameAt = Date.now();
    this.#welcomeTimer = setTimeout(() => this.#drop("no welcome from the server"), WELCOME_TIMEOUT_MS);
  }

  /** Exchanges a token for a single-use ticket, so no long-lived token sits in a URL or a log. */
  async #ticket() {
    const reply = await this.#request("POST", "/auth/ticket", await this.#token());
    const { ticket } = await reply.json();
    if (typeof ticket !== "string") throw new HubbubError("bad_reply", "POST /auth/ticket gave no ticket");
    return ticket;
  }

  /** @param {Transport} transport @param {string} ticket */
  #streamUrl(transport, ticket) {
    const params = new URLSearchParams();
    if (this.#room !== null) params.set("room", this.#room);
    if (this.#subs !== null) params.set("channels", this.#wanted().join(","));
    // EventSource cannot set Last-Event-ID on a fresh EventSource: the server takes a query param.
    if (this.lastId) params.set(transport === "websocket" ? "since" : "last_event_id", this.lastId);
    // EventSource hides comments: ask for heartbeats the page can see, to tell quiet from dead.
    if (transport === "sse") params.set("heartbeat", "1");
    params.set("ticket", ticket);
    const base = transport === "websocket" ? this.#o.baseUrl.replace(/^http/, "ws") : this.#o.baseUrl;
    const prefix = transport === "websocket" ? "ws" : "sse";
    const path = this.#subs !== null ? "" : this.#room === null ? "/notifications" : "/chat";
    return `${base}/${prefix}${path}?${params}`;
  }

  /** @returns {Transport} */
  #nextTransport() {
    const { transport } = this.#o;
    if (transport === "websocket") return "websocket";
    if (transport === "sse" || this.#sseForGood || !this.#o.WebSocket) return "sse";
    return "websocket";
  }

  // --- receiving ---------------------------------------------------------

  /** @param {string} text */
  #onData(text) {
    this.#lastFrameAt = Date.now();
    /** @type {Frame} */
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.#emit("error", { code: "bad_frame", detail: `not JSON: ${text.slice(0, 80)}` });
      return;
    }
    if (typeof frame !== "object" || frame === null) {
      this.#emit("error", { code: "bad_frame", detail: `not an object: ${text.slice(0, 80)}` });
      return;
    }
    switch (frame.type) {
      case "welcome": return this.#onWelcome(frame);
      case "ack": return this.#onAck(frame);
      case "error": return this.#onErrorFrame(frame);
      case "resync": this.#relay(frame); return this.#emitAll("resync", frame);
      case "subscribed": this.#relay(frame); return this.#onChanged(frame);
      case "unsubscribed": return this.#onChanged(frame);
      case "pong": case "ping": return;
      default: return this.#onMessage(frame);
    }
  }

  /** @param {Frame} frame */
  #onWelcome(frame) {
    clearTimeout(this.#welcomeTimer);
    this.#welcome = frame;
    this.#relay(frame);
    const reconnected = this.#everOpened;
    this.#everOpened = this.#welcomed = true;
    this.#openedAt = Date.now();
    this.#wsFailures = this.#refreshStreak = 0;
    this.#user = typeof frame.user === "string" ? frame.user : null;
    if (this.#subs !== null && this.#reconcile(frame.channels)) return; // SSE: reopening with the set
    // Queued sends go first, so a send() made by a "state" listener stays behind them.
    for (const item of this.#queue.splice(0)) this.#dispatch(item);
    this.#setState("open", this.#transport);
    this.#emit("welcome", frame);
    // Back without a cursor (nothing had arrived yet): the server cannot replay
    // the gap, so tell the app to refetch, as a stale cursor would.
    if (reconnected && frame.recovered == null) this.#emitAll("resync", { type: "resync", reason: "no_cursor" });
    this.#startHeartbeat(Number(frame.heartbeat));
  }

  /** @param {Frame} message  chat, notification, join, leave, or a type this client does not know */
  #onMessage(message) {
    if (typeof message.id === "string" && this.#dedupe.seen(message.id)) return;
    this.#deliver(message);
  }

  /**
   * To the client's listeners, then to the Subscription of its channel; a leading tab relays it.
   * @param {Frame} message @param {boolean} [echo]  built from an ack: followers must not move
   *   their cursor to it either (messages before it may still be on their way)
   */
  #deliver(message, echo = false) {
    this.#relay(message, echo);
    this.#emit("message", message);
    const channel = typeof message.channel === "string" ? message.channel : "";
    const name = channel === "broadcast" || channel.startsWith("user:") ? "notifications" : channel;
    this.#subs?.get(/** @type {ChannelName} */ (name))?.dispatchEvent(new CustomEvent("message", { detail: message }));
  }

  // --- the set of channels (a client made without `channel`) ---------------

  // --- tabs sharing one connection (shareTabs) -----------------------------

  /** This tab got the lock: it leads, with every tab's channels, from its own last id. */
  #lead() {
    if (this.#stopped) return;
    this.#leading = true;
    this.#tabs?.post({ kind: "leader" });
    void this.#open();
  }

  /** A message from another tab of the group. @param {TabMessage} data */
  #onTab(data) {
    switch (data.kind) {
      case "channels": case "bye": {
        const before = this.#wanted();
        const newcomer = data.kind === "channels" && !this.#peers.has(data.tab);
        if (data.kind === "bye") this.#peers.delete(data.tab);
        else this.#peers.set(data.tab, data.names ?? []);
        this.#channelsChanged(before);
        if (newcomer && this.#leading) this.#greetTab();
        return;
      }
      case "leader": return this.#tabs?.post({ kind: "channels", names: this.channels });
      case "frame": if (!this.#leading && data.frame) this.#onRelayed(data.frame, data.echo === true); return;
      case "state": if (!this.#leading && data.state) this.#follow(data.state, data.transport ?? null); return;
    }
  }

  /** Tells a tab that just arrived where the connection stands (it follows from here). */
  #greetTab() {
    if (this.#welcome !== null && this.#state === "open") this.#relay(this.#welcome);
    this.#tabs?.post({ kind: "state", state: this.#state, transport: this.#transport });
  }

  /** What the leader relays, if this tab leads. @param {Frame} frame @param {boolean} [echo] */
  #relay(frame, echo = false) {
    if (this.#tabs !== null && this.#leading) this.#tabs.post({ kind: "frame", frame, echo });
  }

  /** A frame of the leader's connection, as this tab would handle it. @param {Frame} frame @param {boolean} echo */
  #onRelayed(frame, echo) {
    switch (frame.type) {
      case "welcome":
        this.#user = typeof frame.user === "string" ? frame.user : null;
        this.#everOpened = true;
        this.#emit("welcome", frame);
        for (const name of Array.isArray(frame.channels) ? frame.channels : []) {
          this.#subs?.get(name)?.dispatchEvent(new CustomEvent("subscribed", { detail: { channel: name } }));
        }
        return;
      case "resync": return this.#emitAll("resync", frame);
      case "subscribed": return this.#onChanged(frame);
      default:
        if (typeof frame.id === "string" && (echo ? this.#dedupe.remember(frame.id) : this.#dedupe.seen(frame.id))) return;
        this.#deliver(frame);
    }
  }

  /** The leader's state is this tab's; its "closed" means the next tab is about to lead. @param {State} state @param {Transport | null} transport */
  #follow(state, transport) {
    this.#setState(state === "closed" ? "reconnecting" : state, transport);
    if (state === "open") for (const item of this.#queue.splice(0)) this.#dispatch(item);
  }

  /** What the connection carries: this tab's channels and, when it leads, the other tabs'. @returns {ChannelName[]} */
  #wanted() {
    const names = new Set(this.channels);
    if (this.#leading) for (const theirs of this.#peers.values()) for (const name of theirs) names.add(name);
    return [...names];
  }

  /** After a change of this tab's set or another tab's. @param {ChannelName[]} before  #wanted() before it */
  #channelsChanged(before) {
    const after = this.#wanted();
    for (const name of after) if (!before.includes(name)) this.#changeSet("subscribe", name);
    for (const name of before) if (!after.includes(name)) this.#changeSet("unsubscribe", name);
  }

  /**
   * Brings the open connection's set in line with subscribe()/unsubscribe(): a frame each on
   * WebSocket; on SSE (whose set is in its URL) a reconnect, once for changes made together.
   * Not open yet: the welcome reconciles. @param {"subscribe" | "unsubscribe"} kind @param {ChannelName} name
   */
  #changeSet(kind, name) {
    if (this.#state !== "open" || this.#conn === null) return;
    if (this.#transport === "websocket") this.#sendChange(kind, name);
    else this.#reopen();
  }

  /** @param {"subscribe" | "unsubscribe"} kind @param {ChannelName} name */
  #sendChange(kind, name) {
    const ref = `${kind === "subscribe" ? "s" : "u"}${++this.#refs}`;
    this.#changes.set(ref, name);
    this.#conn?.send(JSON.stringify({ type: kind, channel: name, ref }));
  }

  /** A new event stream with the new set, resuming from the last id; once for changes made together. */
  #reopen() {
    if (this.#reopening) return;
    this.#reopening = true;
    queueMicrotask(() => {
      this.#reopening = false;
      if (this.#stopped || this.#conn === null) return;
      this.#conn.close(1000, "changing channels");
      this.#release();
      void this.#open();
    });
  }

  /**
   * The welcome's set against the wanted one: what a subscribe() or unsubscribe() made while
   * connecting missed. @param {unknown} welcomed @returns {boolean} true when SSE reopens for it
   */
  #reconcile(welcomed) {
    const have = new Set(Array.isArray(welcomed) ? welcomed : []);
    const want = this.#wanted();
    const missing = want.filter((name) => !have.has(name));
    const extra = [...have].filter((name) => !want.includes(/** @type {ChannelName} */ (name)));
    if (this.#transport === "sse" && (missing.length || extra.length)) {
      this.#reopen();
      return true;
    }
    for (const name of want) {
      if (have.has(name)) this.#subs?.get(name)?.dispatchEvent(new CustomEvent("subscribed", { detail: { channel: name } }));
    }
    for (const name of missing) this.#sendChange("subscribe", name);
    for (const name of extra) this.#sendChange("unsubscribe", /** @type {ChannelName} */ (name));
    return false;
  }

  /** A subscribe or unsubscribe frame confirmed. @param {Frame} frame */
  #onChanged(frame) {
    if (typeof frame.ref === "string") this.#changes.delete(frame.ref);
    const name = /** @type {ChannelName} */ (String(frame.channel));
    if (frame.type === "subscribed") this.#subs?.get(name)?.dispatchEvent(new CustomEvent("subscribed", { detail: { channel: name } }));
  }

  /** @param {Frame} frame */
  #onAck(frame) {
    const item = this.#takeInflight(frame.ref);
    if (!item) return;
    this.#echo(item, String(frame.id));
    item.resolve(/** @type {Ack} */ (frame));
  }

  /** @param {Frame} frame */
  #onErrorFrame(frame) {
    const code = String(frame.code ?? "error");
    const detail = String(frame.detail ?? "");
    const changing = typeof frame.ref === "string" ? this.#changes.get(frame.ref) : undefined;
    if (changing !== undefined) return this.#refused(/** @type {string} */ (frame.ref), changing, new HubbubError(code, detail));
    const item = this.#takeInflight(frame.ref);
    if (item) item.reject(new HubbubError(code, detail));
    else this.#emit("error", { code, detail });
  }

  /**
   * The hub refused a subscribe (a room the token does not allow, too many channels): the
   * channel leaves the set and its Subscription hears why.
   * @param {string} ref @param {ChannelName} name @param {HubbubError} error
   */
  #refused(ref, name, error) {
    this.#changes.delete(ref);
    const sub = this.#subs?.get(name);
    if (ref.startsWith("u") || !sub) return;
    this.#subs?.delete(name);
    sub.dispatchEvent(new CustomEvent("error", { detail: errorDetail(error) }));
    this.#emit("error", { ...errorDetail(error), channel: name });
  }

  /**
   * The hub answers a connection's frames in order, so an ack or an error
   * without a matching ref belongs to the oldest send still waiting.
   * @param {unknown} ref
   */
  #takeInflight(ref) {
    const at = this.#inflight.findIndex((item) => item.ref === ref);
    return this.#inflight.splice(at === -1 ? 0 : at, 1)[0];
  }

  /**
   * The hub does not send a WebSocket sender its own message, while an SSE
   * stream does carry it: so the client emits it itself from the ack, unless the
   * stream was first. Either way every message of the room is emitted once, on
   * both transports. The timestamp is the local clock's.
   * @param {Outgoing} item @param {string} id
   */
  #echo(item, id) {
    if (this.#dedupe.remember(id)) return;
    this.#deliver({
      type: "chat", text: item.text, id, channel: `room:${item.room}`,
      sender: this.#user, timestamp: new Date().toISOString(),
    }, true);
  }

  // --- sending -----------------------------------------------------------

  /**
   * Problems found before anything goes out. An oversized frame would make the
   * hub close the whole connection (1009), so it is refused here.
   * @param {string | null} room @param {unknown} text @param {string} ref @returns {HubbubError | null}
   */
  #refuse(room, text, ref) {
    if (room === null) {
      return new HubbubError("not_a_room", "only a room client can send; notifications are published server-side");
    }
    if (typeof text !== "string" || text === "") {
      return new HubbubError("bad_request", "text must be a non-empty string");
    }
    const frame = JSON.stringify({ type: "chat", channel: this.#subs === null ? undefined : `room:${room}`, text, ref });
    if (new TextEncoder().encode(frame).length > this.#o.maxMessageBytes) {
      return new HubbubError("too_large", `a message must stay under ${this.#o.maxMessageBytes} bytes`);
    }
    if (this.#stopped) return new HubbubError("closed", "the client is closed; call connect()");
    return null;
  }

  /** @param {Outgoing} item */
  #dispatch(item) {
    if (this.#transport === "sse" || !this.#leading) { // a following tab posts: the leader's socket is not its own
      // One POST at a time, so messages arrive in the order they were sent.
      this.#posts = this.#posts.then(() => this.#post(item));
      return;
    }
    this.#inflight.push(item);
    try {
      const channel = this.#subs === null ? undefined : `room:${item.room}`; // /ws: the frame names its room
      this.#conn?.send(JSON.stringify({ type: "chat", channel, text: item.text, ref: item.ref }));
    } catch {
      // The socket is closing; its close event rejects the in-flight sends.
    }
  }

  /** @param {Outgoing} item */
  async #post(item) {
    try {
      // The same key on the retry after a refreshed token: the hub delivers the text once.
      const headers = { "Idempotency-Key": idempotencyKey() };
      const reply = await this.#authorized("POST", `${roomPath(item.room, "send()")}/messages`, { text: item.text },
        headers);
      const { id } = await reply.json();
      this.#echo(item, String(id));
      item.resolve({ type: "ack", id: String(id), ref: item.ref });
    } catch (error) {
      item.reject(asHubbubError(error));
    }
  }

  // --- HTTP --------------------------------------------------------------

  /** The token to send; null when the page's cookies sign in (no getToken). */
  async #token() {
    if (this.#o.getToken === null) return null;
    const refresh = this.#tokenRefused;
    this.#tokenRefused = false;
    let token;
    try {
      token = await this.#o.getToken({ refresh });
    } catch (error) {
      throw new HubbubError("token", `getToken() failed: ${errorText(error)}`);
    }
    if (!token) throw new HubbubError("unauthorized", "getToken() returned no token");
    return token;
  }

  /**
   * A request with the bearer token; on 401 once more with a fresh one.
   * @param {string} method @param {string} path @param {unknown} [body]
   * @param {Record<string, string>} [extraHeaders]
   */
  async #authorized(method, path, body, extraHeaders) {
    try {
      return await this.#request(method, path, await this.#token(), body, extraHeaders);
    } catch (error) {
      if (!(error instanceof HubbubError) || error.status !== 401) throw error;
      this.#tokenRefused = true;
      return this.#request(method, path, await this.#token(), body, extraHeaders);
    }
  }

  /**
   * @param {string} method @param {string} path @param {string | null} token @param {unknown} [body]
   * @param {Record<string, string>} [extraHeaders]
   * @returns {Promise<Response>}
   */
  async #request(method, path, token, body, extraHeaders = {}) {
    /** @type {Record<string, string>} */
    const headers = token === null ? { ...extraHeaders } : { ...extraHeaders, Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let reply;
    try {
      reply = await this.#o.fetch(this.#o.baseUrl + path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body),
        // A request on a connection gone silent would otherwise wait for ever (no TCP error comes).
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      });
    } catch (error) {
      throw new HubbubError("network", `${method} ${path}: ${errorText(error)}`);
    }
    if (!reply.ok) throw await httpError(reply, `${method} ${path}`);
    return reply;
  }

  // --- closing and retrying ----------------------------------------------

  /** @param {number} code @param {string} reason */
  #onClose(code, reason) {
    const welcomed = this.#welcomed;
    this.#release();
    if (this.#stopped) return;
    if (welcomed && Date.now() - this.#openedAt >= STABLE_MS) this.#attempt = 0;
    // A code of the hub's own means the server was reached and said why.
    const hubCode = this.#transport === "websocket" && code in CLOSE_CODES;
    if (!welcomed && !hubCode) return void this.#diagnose();
    // An event stream has no close code: its end is always worth a retry.
    if (this.#transport === "sse") return this.#retry();
    const name = CLOSE_CODES[code]?.name ?? "disconnected";
    this.#act(closeAction(code), new HubbubError(name, reason || `closed with ${code}`, { closeCode: code }));
  }

  /**
   * A connection failed before its welcome with nothing to go on: browsers hide
   * the HTTP status of a refused upgrade (1006) or event stream (a bare error),
   * though the hub may have said 403 or 401 there. The same checks over HTTP tell
   * a refusal (stop, or refresh the token) from a transport that does not get through.
   */
  async #diagnose() {
    const generation = ++this.#generation;
    this.#setState("reconnecting", this.#transport);
    const refusal = await this.#probe();
    if (generation !== this.#generation || this.#stopped) return;
    if (refusal) return this.#onHttpFailure(refusal);
    if (this.#transport === "websocket" && this.#noteWebSocketFailure()) return this.#retry({ now: true });
    this.#retry();
  }

  /**
   * The hub's reason to refuse this connection, if any. A client of many channels drops a
   * room refused for good (its Subscription hears why) and tries again without it.
   * @returns {Promise<HubbubError | null>}
   */
  async #probe() {
    const rooms = this.#subs === null ? (this.#room === null ? [] : [this.#room])
      : this.channels.filter((name) => name !== "notifications").map((name) => name.slice(5));
    // Notifications only: the ticket exchange already vouched for the user.
    for (const room of rooms) {
      try {
        await this.#authorized("GET", `${roomPath(room, "probe")}/messages?limit=1`);
      } catch (error) {
        const refusal = asHubbubError(error);
        if (!refusal.status || closeAction(4000 + refusal.status) === "retry") continue;
        if (this.#subs === null || closeAction(4000 + refusal.status) !== "stop") return refusal;
        const ref = `s${++this.#refs}`;
        this.#changes.set(ref, /** @type {ChannelName} */ (`room:${room}`));
        this.#refused(ref, /** @type {ChannelName} */ (`room:${room}`), refusal);
      }
    }
    return null;
  }

  /** @returns {boolean} true when this failure moved the client to SSE */
  #noteWebSocketFailure() {
    this.#wsFailures += 1;
    if (this.#o.transport !== "auto" || this.#wsFailures < WS_FAILURES_BEFORE_SSE) return false;
    this.#sseForGood = true;
    return true;
  }

  /** The ticket exchange or the probe failed. @param {HubbubError} error */
  #onHttpFailure(error) {
    // Same rules as the close codes: 4000 + status (401 → refresh, 400/403 → stop).
    const action = error.status ? closeAction(4000 + error.status) : "retry";
    // Outages are reported by the "state" event; an auth or token problem needs the app.
    const transient = error.code === "network" || error.status === 429 || (error.status ?? 0) >= 500;
    if (action !== "stop" && !transient) this.#emit("error", errorDetail(error));
    this.#act(action, error);
  }

  /** @param {CloseAction} action @param {HubbubError} error */
  #act(action, error) {
    if (action === "stop") return this.#stop(error, true);
    // getToken() runs before every attempt, so "refresh" is a retry; at once the
    // first time, with backoff if the fresh token is refused again.
    if (action === "refresh") this.#tokenRefused = true;
    if (action === "refresh" && ++this.#refreshStreak === 1) return this.#retry({ now: true });
    const restarting = error.closeCode === 1012;
    this.#retry({ atLeastMs: error.retryAfterMs ?? 0, spreadMs: restarting ? RESTART_SPREAD_MS : undefined });
  }

  /** @param {{ now?: boolean, atLeastMs?: number, spreadMs?: number }} [when]  spreadMs: jitter over this window */
  #retry({ now = false, atLeastMs = 0, spreadMs } = {}) {
    const { minDelayMs, maxDelayMs } = this.#o;
    let delay = 0;
    if (!now) {
      const step = this.#attempt++;
      const wait = spreadMs === undefined ? backoff(step, minDelayMs, maxDelayMs)
        : Math.min(maxDelayMs, minDelayMs + Math.floor(Math.random() * spreadMs));
      delay = Math.max(atLeastMs, wait);
    }
    this.#setState("reconnecting", this.#nextTransport());
    clearTimeout(this.#retryTimer);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.#open();
    }, delay);
  }

  /** A connection the client itself found dead (no welcome, or silent too long). @param {string} reason */
  #drop(reason) {
    this.#conn?.close(SILENCE_CLOSE, reason);
    this.#onClose(SILENCE_CLOSE, reason);
  }

  /** Forgets the current connection; sends awaiting an ack on it fail. @param {HubbubError} [error] */
  #release(error = new HubbubError("disconnected", "the connection closed before the hub acknowledged")) {
    clearTimeout(this.#welcomeTimer);
    clearInterval(this.#heartbeatTimer);
    this.#conn = null;
    this.#welcomed = false;
    for (const item of this.#inflight.splice(0)) item.reject(error);
  }

  /** @param {HubbubError} error @param {boolean} report  emit it as an error event */
  #stop(error, report) {
    if (this.#stopped) return;
    this.#stopped = true;
    this.#generation += 1;
    clearTimeout(this.#retryTimer);
    this.#conn?.close(1000, "client closed");
    this.#release(error);
    for (const item of this.#queue.splice(0)) item.reject(error);
    this.#listenForWake(false);
    if (report) this.#emit("error", errorDetail(error));
    this.#setState("closed", null);
    if (this.#tabs !== null) { // the next tab in line takes the lock and leads
      this.#tabs.post({ kind: "bye" });
      this.#tabs.stop();
      this.#tabs = null;
      this.#peers.clear();
    }
  }

  /**
   * Liveness on both transports. A silently dead network (a NAT that dropped the flow, a
   * proxy gone quiet) shows no error: the line just goes silent. On SSE the server sends a
   * ping event every heartbeat (asked for with heartbeat=1); on WebSocket browsers answer
   * the server's protocol pings without telling the page, so the client sends its own ping
   * once the line is quiet for a heartbeat. Silent for two heartbeats and a little more:
   * dropped, and the client reconnects and resumes.
   * @param {number} heartbeatS  the server's HEARTBEAT_INTERVAL from the welcome
   */
  #startHeartbeat(heartbeatS) {
    if (!(heartbeatS > 0)) return;
    const intervalMs = Math.max(1000, heartbeatS * 1000);
    const deadlineMs = 2 * intervalMs + LIVENESS_SLACK_MS;
    this.#heartbeatTimer = setInterval(() => {
      const silentMs = Date.now() - this.#lastFrameAt;
      if (silentMs >= deadlineMs) this.#drop(`nothing from the server for ${silentMs} ms`);
      else if (this.#transport === "websocket" && silentMs >= intervalMs && Date.now() - this.#pingedAt >= intervalMs) {
        this.#pingedAt = Date.now(); // once a heartbeat while quiet, not at every check
        this.#conn?.send('{"type":"ping"}');
      }
    }, intervalMs / 2);
  }

  // --- waking up early ---------------------------------------------------

  /** Back online, or the tab is visible again: no need to sit out the backoff. */
  #wake = () => {
    if (this.#retryTimer === undefined || this.#stopped) return;
    if (typeof document !== "undefined" && document.visibilityState === "hidden") return;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    void this.#open();
  };

  /** @param {boolean} on */
  #listenForWake(on) {
    const method = on ? "addEventListener" : "removeEventListener";
    if (typeof window !== "undefined") window[method]("online", this.#wake);
    if (typeof document !== "undefined") document[method]("visibilitychange", this.#wake);
  }

  // --- events ------------------------------------------------------------

  /** @param {State} state @param {Transport | null} transport */
  #setState(state, transport) {
    if (state === this.#state && transport === this.#transport) return;
    this.#state = state;
    this.#transport = transport;
    if (this.#tabs !== null && this.#leading) this.#tabs.post({ kind: "state", state, transport });
    this.#emit("state", { state, transport });
  }

  /** @param {string} type @param {unknown} detail */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** To the client and every Subscription (a resync concerns them all). @param {string} type @param {unknown} detail */
  #emitAll(type, detail) {
    this.#emit(type, detail);
    for (const sub of this.#subs?.values() ?? []) sub.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/**
 * @typedef {{ kind: "channels" | "bye" | "leader" | "frame" | "state", tab: string, names?: ChannelName[],
 *   frame?: Frame, echo?: boolean, state?: State, transport?: Transport | null }} TabMessage
 */

/**
 * Tabs of one origin that share one connection (shareTabs). Every tab asks for the same Web
 * Lock; the one holding it leads: it runs the connection with every tab's channels and relays
 * what arrives over a BroadcastChannel, while the others follow (and send chat by POST). The
 * browser frees the lock when the leading tab closes or crashes, and the next tab in line
 * leads, resuming from the last id it saw; each tab drops what it already had.
 */
class TabGroup {
  #channel;
  #locks;
  #name;
  #abort = new AbortController();
  #release = () => {};
  #bye = () => this.post({ kind: "bye" });
  id = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;

  /**
   * @param {string} name @param {typeof BroadcastChannel} Impl @param {LockManager} locks
   * @param {(data: TabMessage) => void} onMessage
   */
  constructor(name, Impl, locks, onMessage) {
    this.#name = name;
    this.#locks = locks;
    this.#channel = new Impl(name);
    this.#channel.onmessage = (event) => onMessage(event.data);
    globalThis.addEventListener?.("pagehide", this.#bye);
  }

  /** Calls onLead once this tab holds the lock; it holds it until stop() or the tab goes. @param {() => void} onLead */
  lead(onLead) {
    this.#locks.request(this.#name, { signal: this.#abort.signal }, () => {
      onLead();
      return new Promise((resolve) => { this.#release = () => resolve(undefined); });
    }).catch(() => {}); // stopped before the lock came
  }

  /** @param {Omit<TabMessage, "tab">} data */
  post(data) {
    this.#channel.postMessage({ ...data, tab: this.id });
  }

  stop() {
    globalThis.removeEventListener?.("pagehide", this.#bye);
    this.#abort.abort();
    this.#release();
    this.#channel.close();
  }
}

/**
 * One channel of a multi-channel client, sharing its connection and its cursor. Events:
 * "message" (this channel's), "subscribed" (the connection carries it), "resync", "error"
 * (the hub refused it: it left the set).
 */
export class Subscription extends EventTarget {
  #ops;

  /**
   * @param {ChannelName} channel
   * @param {{ send(text: string, ref?: string): Promise<Ack>, history(query: { since?: string, limit?: number }): Promise<History>, unsubscribe(): void }} ops
   */
  constructor(channel, ops) {
    super();
    /** @readonly */
    this.channel = channel;
    this.#ops = ops;
  }

  /** Rooms only: posts a chat message to this room; resolves with the ack. @param {string} text @param {string} [ref] */
  send(text, ref) {
    return this.#ops.send(text, ref);
  }

  /** Rooms only: the room's retained history (does not move the cursor). @param {{ since?: string, limit?: number }} [query] */
  history(query = {}) {
    return this.#ops.history(query);
  }

  /** Takes this channel out of the connection's set. */
  unsubscribe() {
    this.#ops.unsubscribe();
  }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/** @param {unknown} channel @returns {string | null} the room, or null for notifications */
function roomOf(channel) {
  const c = /** @type {{ room?: unknown, notifications?: unknown } | undefined} */ (channel);
  if (c && typeof c.room === "string") {
    if (!ROOM_NAME.test(c.room)) {
      throw new TypeError(`Hubbub: room must be 1-64 of A-Z a-z 0-9 _ . -, got ${JSON.stringify(c.room)}`);
    }
    return c.room;
  }
  if (c && c.notifications === true) return null;
  throw new TypeError('Hubbub: channel must be {room: "NAME"} or {notifications: true}');
}

/** @param {unknown} name */
function checkName(name) {
  if (name === "notifications" || (typeof name === "string" && name.startsWith("room:") && ROOM_NAME.test(name.slice(5)))) return;
  throw new TypeError(`Hubbub: a channel is "room:NAME" (1-64 of A-Z a-z 0-9 _ . -) or "notifications", got ${JSON.stringify(name)}`);
}

/** @param {string | null} room @param {string} caller */
function roomPath(room, caller) {
  if (room === null) throw new HubbubError("not_a_room", `${caller} needs a room channel`);
  return `/api/rooms/${encodeURIComponent(room)}`;
}

/** @param {Response} reply @param {string} what */
async function httpError(reply, what) {
  /** @type {{ error?: string, detail?: string }} */
  let body = {};
  try {
    body = await reply.json();
  } catch {
    // Not the hub's JSON (a proxy's page): the status still says enough.
  }
  const code = body.error ?? Object.keys(ERROR_CODES).find((k) => ERROR_CODES[k] === reply.status) ?? "http_error";
  const retryAfterS = Number(reply.headers.get("Retry-After"));
  return new HubbubError(code, body.detail ?? `${what} answered ${reply.status}`, {
    status: reply.status,
    retryAfterMs: retryAfterS > 0 ? retryAfterS * 1000 : undefined,
  });
}

/** @param {unknown} error */
function asHubbubError(error) {
  return error instanceof HubbubError ? error : new HubbubError("error", errorText(error));
}

/** @param {unknown} error */
function errorText(error) {
  return error instanceof Error ? error.message : String(error);
}

/** @param {HubbubError} error */
function errorDetail({ code, detail, status, closeCode }) {
  return { code, detail, status, closeCode };
}
