// @ts-check
/**
 * hubbub browser client: one subscription (a room, or the user's notifications)
 * over WebSocket, falling back to Server-Sent Events + HTTP POST. It reconnects with
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
/** @typedef {{ type: string, id?: string, [field: string]: unknown }} Frame */
/** @typedef {Frame} Message  chat, notification, join, leave: what a `message` event carries */
/** @typedef {{ type: "ack", id: string, ref: string }} Ack */
/** @typedef {{ messages: Frame[], recovered: boolean }} History */
/**
 * @typedef {object} HubbubOptions
 * @property {Channel} channel  what to subscribe to; one client = one subscription = one cursor
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
 * @property {typeof WebSocket} [WebSocket]  implementation to use (tests, Node); default the global
 * @property {typeof EventSource} [EventSource]  implementation to use; default the global
 * @property {typeof fetch} [fetch]  implementation to use; default the global
 */
/**
 * @typedef {object} Outgoing  one send() waiting for its ack
 * @property {string} text
 * @property {string} ref
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
  /** @type {string | null} */ #room;
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
    const { channel, getToken = null, transport = "auto" } = options ?? {};
    if (getToken !== null && typeof getToken !== "function") {
      throw new TypeError("Hubbub: getToken must be a function returning a token (or be left out)");
    }
    if (!TRANSPORTS.includes(transport)) throw new TypeError(`Hubbub: transport must be one of ${TRANSPORTS.join(", ")}`);
    this.#room = roomOf(channel);
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
    };
    if (options.since) this.#dedupe.seen(options.since);
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
    const frameRef = ref ?? `r${++this.#refs}`;
    const refusal = this.#refuse(text, frameRef);
    if (refusal) return Promise.reject(refusal);
    return new Promise((resolve, reject) => {
      const item = { text, ref: frameRef, resolve, reject };
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
  async history({ since, limit } = {}) {
    const params = new URLSearchParams();
    if (since) params.set("since", since);
    if (limit !== undefined) params.set("limit", String(limit));
    const query = params.toString() ? `?${params}` : "";
    const reply = await this.#authorized("GET", `${this.#roomPath("history()")}/messages${query}`);
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
    // EventSource cannot set Last-Event-ID on a fresh EventSource: the server takes a query param.
    if (this.lastId) params.set(transport === "websocket" ? "since" : "last_event_id", this.lastId);
    // EventSource hides comments: ask for heartbeats the page can see, to tell quiet from dead.
    if (transport === "sse") params.set("heartbeat", "1");
    params.set("ticket", ticket);
    const base = transport === "websocket" ? this.#o.baseUrl.replace(/^http/, "ws") : this.#o.baseUrl;
    const prefix = transport === "websocket" ? "ws" : "sse";
    return `${base}/${prefix}/${this.#room === null ? "notifications" : "chat"}?${params}`;
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
      case "resync": return this.#emit("resync", frame);
      case "pong": case "ping": return;
      default: return this.#onMessage(frame);
    }
  }

  /** @param {Frame} frame */
  #onWelcome(frame) {
    clearTimeout(this.#welcomeTimer);
    const reconnected = this.#everOpened;
    this.#everOpened = this.#welcomed = true;
    this.#openedAt = Date.now();
    this.#wsFailures = this.#refreshStreak = 0;
    this.#user = typeof frame.user === "string" ? frame.user : null;
    // Queued sends go first, so a send() made by a "state" listener stays behind them.
    for (const item of this.#queue.splice(0)) this.#dispatch(item);
    this.#setState("open", this.#transport);
    this.#emit("welcome", frame);
    // Back without a cursor (nothing had arrived yet): the server cannot replay
    // the gap, so tell the app to refetch, as a stale cursor would.
    if (reconnected && frame.recovered == null) this.#emit("resync", { type: "resync", reason: "no_cursor" });
    this.#startHeartbeat(Number(frame.heartbeat));
  }

  /** @param {Frame} message  chat, notification, join, leave, or a type this client does not know */
  #onMessage(message) {
    if (typeof message.id === "string" && this.#dedupe.seen(message.id)) return;
    this.#emit("message", message);
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
    const item = this.#takeInflight(frame.ref);
    if (item) item.reject(new HubbubError(code, detail));
    else this.#emit("error", { code, detail });
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
    this.#emit("message", {
      type: "chat", text: item.text, id, channel: `room:${this.#room}`,
      sender: this.#user, timestamp: new Date().toISOString(),
    });
  }

  // --- sending -----------------------------------------------------------

  /**
   * Problems found before anything goes out. An oversized frame would make the
   * hub close the whole connection (1009), so it is refused here.
   * @param {unknown} text @param {string} ref @returns {HubbubError | null}
   */
  #refuse(text, ref) {
    if (this.#room === null) {
      return new HubbubError("not_a_room", "only a room client can send; notifications are published server-side");
    }
    if (typeof text !== "string" || text === "") {
      return new HubbubError("bad_request", "text must be a non-empty string");
    }
    const frame = JSON.stringify({ type: "chat", text, ref });
    if (new TextEncoder().encode(frame).length > this.#o.maxMessageBytes) {
      return new HubbubError("too_large", `a message must stay under ${this.#o.maxMessageBytes} bytes`);
    }
    if (this.#stopped) return new HubbubError("closed", "the client is closed; call connect()");
    return null;
  }

  /** @param {Outgoing} item */
  #dispatch(item) {
    if (this.#transport === "sse") {
      // One POST at a time, so messages arrive in the order they were sent.
      this.#posts = this.#posts.then(() => this.#post(item));
      return;
    }
    this.#inflight.push(item);
    try {
      this.#conn?.send(JSON.stringify({ type: "chat", text: item.text, ref: item.ref }));
    } catch {
      // The socket is closing; its close event rejects the in-flight sends.
    }
  }

  /** @param {Outgoing} item */
  async #post(item) {
    try {
      // The same key on the retry after a refreshed token: the hub delivers the text once.
      const headers = { "Idempotency-Key": idempotencyKey() };
      const reply = await this.#authorized("POST", `${this.#roomPath("send()")}/messages`, { text: item.text },
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

  /** @param {string} caller */
  #roomPath(caller) {
    if (this.#room === null) throw new HubbubError("not_a_room", `${caller} needs a room channel`);
    return `/api/rooms/${encodeURIComponent(this.#room)}`;
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

  /** @returns {Promise<HubbubError | null>} the hub's reason to refuse this subscription, if any */
  async #probe() {
    if (this.#room === null) return null; // the ticket exchange already vouched for the user
    try {
      await this.#authorized("GET", `${this.#roomPath("probe")}/messages?limit=1`);
      return null;
    } catch (error) {
      const refusal = asHubbubError(error);
      return refusal.status && closeAction(4000 + refusal.status) !== "retry" ? refusal : null;
    }
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
    this.#emit("state", { state, transport });
  }

  /** @param {string} type @param {unknown} detail */
  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
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
