// @ts-check
/**
 * The demo page at "/": demo login, one room (chat + presence), the user's
 * notifications, and the connection state, all through hubbub.js.
 *
 * Everything comes from the URL, so a link reproduces a session:
 *   /?user=alice&room=lobby            join "lobby" as alice
 *   /?user=alice#general               the room may also be the hash
 *   /?user=alice&transport=sse         force Server-Sent Events + POST
 * Without a user the sign-in form is shown.
 *
 * `window.demo` exposes the clients and a log of what they emitted, for tests.
 */
import { Hubbub, parseId } from "./hubbub.js";

const NAME = /^[A-Za-z0-9_.-]{1,64}$/; // rooms (API.md) and demo users alike
const HISTORY_ON_JOIN = 50;

/** @param {string} id @returns {HTMLElement} */
const $ = (id) => /** @type {HTMLElement} */ (document.getElementById(id));

/** @typedef {{ type: string, id?: string, text?: string, sender?: string | null, timestamp?: string,
 *              channel?: string, data?: unknown, [k: string]: unknown }} Message */

// ---------------------------------------------------------------------------
// What the tests (and a curious developer in the console) can look at
// ---------------------------------------------------------------------------

const log = {
  /** every state shown in #state, in order */ states: /** @type {string[]} */ ([]),
  /** every state of the notifications client */ inboxStates: /** @type {string[]} */ ([]),
  /** message events of the room client, per id: more than 1 would be a client bug */
  seen: /** @type {Record<string, number>} */ ({}),
  duplicates: /** @type {string[]} */ ([]),
  welcomes: 0,
  inboxWelcomes: 0,
  resyncs: /** @type {unknown[]} */ ([]),
  errors: /** @type {unknown[]} */ ([]),
  tokenFetches: 0,
};
/** @type {{ log: typeof log, room: Hubbub | null, inbox: Hubbub | null, user: string | null, roomName: string | null }} */
const demo = { log, room: null, inbox: null, user: null, roomName: null };
Object.assign(window, { demo });

// ---------------------------------------------------------------------------
// Tokens: the demo login, cached until shortly before they expire
// ---------------------------------------------------------------------------

/**
 * A getToken() for Hubbub. It returns the cached token while it has a good while
 * left, else fetches a fresh one: the client calls it before every connection and
 * again after a 4401 / 401, when the old token has run out.
 * @param {{ user: string, scope?: string }} body
 * @returns {() => Promise<string>}
 */
function demoLogin(body) {
  /** @type {{ token: string, expiresAt: number, marginMs: number } | null} */
  let cached = null;
  /** @type {Promise<string> | null} */
  let pending = null;

  async function fetchToken() {
    log.tokenFetches += 1;
    const reply = await fetch(`${HUB_PATH}/auth/demo-token`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
    });
    /** @type {{ token?: string, expires_in?: number, error?: string, detail?: string }} */
    const answer = await reply.json().catch(() => ({}));
    if (reply.status === 403) throw new DemoLoginOff(answer.detail ?? "demo login is disabled");
    if (!reply.ok || typeof answer.token !== "string") {
      throw new Error(answer.detail || `demo login answered ${reply.status}`);
    }
    const now = Date.now();
    const lifetimeMs = Math.max(0, Number(answer.expires_in) || 0) * 1000;
    // The token's own exp is the truth; expires_in is the fallback.
    const exp = jwtExpiry(answer.token);
    const expiresAt = exp ?? now + lifetimeMs;
    const marginMs = Math.min(60_000, (lifetimeMs || expiresAt - now) / 4);
    cached = { token: answer.token, expiresAt, marginMs };
    return answer.token;
  }

  /** @param {{ refresh?: boolean }} [context] refresh: the hub refused the cached token */
  return async function getToken({ refresh = false } = {}) {
    // A restarted server without JWT_SECRET has a new secret: the old token is worthless.
    if (refresh) cached = null;
    if (cached && cached.expiresAt - Date.now() > cached.marginMs) return cached.token;
    pending ??= fetchToken().finally(() => {
      pending = null;
    });
    return pending;
  };
}

/** This server signs no demo tokens (JWT_SECRET is set and DEMO_LOGIN is not 1). */
class DemoLoginOff extends Error {}

/** The page of a production server: no demo login, so no chat to show; say what to do instead. */
function showProductionNotice() {
  $("login").hidden = true;
  $("app").hidden = true;
  $("status").hidden = true;
  showBanner("Sign-in is up to your app: this hub has JWT_SECRET set and demo login off. "
    + "Your app gives its users tokens (see docs/api.md, Authentication) and serves the page "
    + "that uses the client at static/hubbub.js. To try this demo here, set DEMO_LOGIN=1.");
  $("banner").dataset.kind = "production";
}

/** @param {string} token @returns {number | null} the exp claim in ms, without verifying anything */
function jwtExpiry(token) {
  try {
    const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(payload.padEnd(Math.ceil(payload.length / 4) * 4, "=")));
    return typeof claims.exp === "number" ? claims.exp * 1000 : null;
  } catch {
    return null;
  }
}

// ---------------------------------------------------------------------------
// Start: sign-in form, or join what the URL says
// ---------------------------------------------------------------------------

// The hub's path prefix: "" at the root, "/rt" when a host app mounts hubbub at /rt (the
// page is then served at /rt/ and every URL it uses is below it).
const HUB_PATH = new URL(".", location.href).pathname.replace(/\/+$/, "");
const HUB_URL = location.origin + HUB_PATH;

const params = new URLSearchParams(location.search);
const user = params.get("user") ?? "";
const roomName = params.get("room") || decodeURIComponent(location.hash.slice(1)) || "lobby";
const transportParam = params.get("transport") ?? "";
const transport = transportParam === "sse" || transportParam === "websocket" ? transportParam : "auto";

// A new room in the hash means a new subscription: simplest is a fresh page.
addEventListener("hashchange", () => {
  if (!params.get("room") && user) location.reload();
});

/** @param {string} problem */
function showLogin(problem) {
  $("login").hidden = false;
  $("status").hidden = true; // no client yet: nothing to show
  const input = /** @type {HTMLInputElement} */ ($("user-input"));
  input.value = NAME.test(user) ? user : localStorage.getItem("hubbub-demo-user") ?? `guest-${Math.floor(Math.random() * 9000 + 1000)}`;
  /** @type {HTMLInputElement} */ ($("room-input")).value = NAME.test(roomName) ? roomName : "lobby";
  /** @type {HTMLSelectElement} */ ($("transport-input")).value = transportParam;
  if (problem) showBanner(problem);
  input.focus();
  input.select();
}

/** @param {string} me @param {string} room @param {"auto" | "websocket" | "sse"} transport */
function start(me, room, transport) {
  localStorage.setItem("hubbub-demo-user", me);
  demo.user = me;
  demo.roomName = room;
  document.title = `#${room} · hubbub demo`;
  $("app").hidden = false;
  $("whoami").hidden = false;
  $("me").textContent = me;
  $("room-name").textContent = `#${room}`;

  const getToken = demoLogin({ user: me });
  const chat = new Hubbub({ channel: { room }, getToken, transport, baseUrl: HUB_URL });
  const inbox = new Hubbub({ channel: { notifications: true }, getToken, transport, baseUrl: HUB_URL });
  demo.room = chat;
  demo.inbox = inbox;

  wireChat(chat, me, room, getToken);
  wireInbox(inbox);
  showCurl(me);
  chat.connect();
  inbox.connect();
}

// ---------------------------------------------------------------------------
// The room: messages, composer, presence
// ---------------------------------------------------------------------------

/**
 * @param {Hubbub} chat @param {string} me @param {string} room
 * @param {() => Promise<string>} getToken
 */
function wireChat(chat, me, room, getToken) {
  const list = /** @type {HTMLUListElement} */ ($("messages"));
  const outbox = /** @type {HTMLUListElement} */ ($("outbox"));
  /** @type {Map<string, HTMLLIElement>} */
  const shown = new Map();
  let historyLoaded = false;

  chat.addEventListener("state", (event) => {
    const { state, transport } = /** @type {CustomEvent} */ (event).detail;
    log.states.push(state);
    showState($("status"), $("state"), $("transport"), state, transport);
    outbox.dataset.waiting = String(state !== "open");
  });

  chat.addEventListener("welcome", () => {
    log.welcomes += 1;
    hideBanner();
    refreshPresence();
    if (!historyLoaded) {
      historyLoaded = true;
      void loadHistory(false);
    }
  });

  chat.addEventListener("message", (event) => {
    const message = /** @type {Message} */ (/** @type {CustomEvent} */ (event).detail);
    if (message.id) {
      log.seen[message.id] = (log.seen[message.id] ?? 0) + 1;
      if (log.seen[message.id] > 1) log.duplicates.push(message.id);
    }
    if (message.type === "chat") renderChat(message);
    else if (message.type === "join" || message.type === "leave") {
      if (message.sender !== me) renderEvent(`${message.sender} ${message.type === "join" ? "joined" : "left"}`, message.type);
      refreshPresence();
    } else if (message.type === "presence") refreshPresence(); // a crowded room's joins and leaves, gathered
  });

  chat.addEventListener("resync", (event) => {
    const detail = /** @type {CustomEvent} */ (event).detail;
    log.resyncs.push(detail);
    // The server could not replay what we missed (it restarted, or we were away too
    // long): say so, and fill in from its history.
    if (detail.reason !== "no_cursor") renderEvent("Reconnected after a gap: reloaded recent history.", "notice");
    void loadHistory(true);
  });

  chat.addEventListener("error", (event) => {
    const detail = /** @type {CustomEvent} */ (event).detail;
    log.errors.push(detail);
    showBanner(describeError(detail));
  });

  /** @param {boolean} afterGap */
  async function loadHistory(afterGap) {
    try {
      const { messages } = await chat.history({ limit: HISTORY_ON_JOIN });
      for (const message of messages) if (message.type === "chat") renderChat(/** @type {Message} */ (message));
    } catch (error) {
      if (afterGap) showBanner(`Could not reload history: ${errorText(error)}`);
    }
  }

  /** Chat keyed by id, placed in id order (a reply can overtake an ack). @param {Message} message */
  function renderChat(message) {
    const id = String(message.id ?? "");
    if (!id || shown.has(id)) return;
    const li = document.createElement("li");
    li.dataset.id = id;
    li.dataset.type = "chat";
    li.dataset.sender = String(message.sender ?? "");
    li.className = `msg${message.sender === me ? " mine" : ""}`;
    const head = document.createElement("div");
    head.className = "msg-head";
    head.append(textEl("span", "sender", message.sender ?? "server"), timeEl(message.timestamp));
    li.append(head, textEl("p", "text", String(message.text ?? "")));
    shown.set(id, li);
    insertInOrder(list, li, id);
    stickToBottom();
  }

  /** @param {string} text @param {string} kind */
  function renderEvent(text, kind) {
    const li = textEl("li", `event ${kind}`, text);
    li.dataset.type = kind;
    list.append(li);
    stickToBottom();
  }

  // Presence: fetched on every (re)connection and on every join/leave frame.
  let presenceTimer = /** @type {ReturnType<typeof setTimeout> | undefined} */ (undefined);
  let presenceSeq = 0;
  function refreshPresence() {
    clearTimeout(presenceTimer);
    presenceTimer = setTimeout(async () => {
      const seq = ++presenceSeq;
      try {
        const reply = await fetch(`${HUB_PATH}/api/rooms/${encodeURIComponent(room)}/presence`, {
          headers: { Authorization: `Bearer ${await getToken()}` },
        });
        if (!reply.ok) return;
        const { users } = await reply.json();
        if (seq === presenceSeq) renderPresence(users, me);
      } catch {
        // Offline: the next welcome refreshes it.
      }
    }, 100);
  }

  // Composer: sends queue inside the client while it is not connected.
  const form = /** @type {HTMLFormElement} */ ($("composer"));
  const input = /** @type {HTMLInputElement} */ ($("text"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    send(text);
  });

  /** @param {string} text */
  function send(text) {
    const pending = document.createElement("li");
    pending.className = "msg mine pending";
    pending.dataset.type = "pending";
    const head = document.createElement("div");
    head.className = "msg-head";
    const note = textEl("span", "note", chat.state === "open" ? "sending…" : "waiting for the connection…");
    head.append(textEl("span", "sender", me), note);
    pending.append(head, textEl("p", "text", text));
    outbox.append(pending);
    stickToBottom();
    chat.send(text).then(
      () => pending.remove(), // the client has already emitted the message itself
      (error) => {
        pending.classList.add("failed");
        pending.dataset.type = "failed";
        note.textContent = sendProblem(error);
        const retry = textEl("button", "retry", "retry");
        retry.addEventListener("click", () => {
          pending.remove();
          send(text);
        });
        const dismiss = textEl("button", "dismiss", "dismiss");
        dismiss.addEventListener("click", () => pending.remove());
        head.append(retry, dismiss);
      },
    );
  }
}

/**
 * After `list`'s last chat item whose id is not newer than `id` (same epoch, higher
 * sequence); ids of a new epoch come after everything from the old one.
 * @param {HTMLElement} list @param {HTMLElement} li @param {string} id
 */
function insertInOrder(list, li, id) {
  const mine = parseId(id);
  /** @type {Element | null} */
  let before = null;
  for (let node = list.lastElementChild; node; node = node.previousElementSibling) {
    const other = node instanceof HTMLElement && node.dataset.id ? parseId(node.dataset.id) : undefined;
    if (other === undefined) continue; // a join/leave line: keep looking
    if (mine && other && other.epoch === mine.epoch && other.seq > mine.seq) before = node;
    else break;
  }
  list.insertBefore(li, before);
}

/** @param {{ id: string, connections: number }[]} users @param {string} me */
function renderPresence(users, me) {
  const list = $("presence");
  const sorted = [...users].sort((a, b) => (a.id === me ? -1 : b.id === me ? 1 : a.id.localeCompare(b.id)));
  list.replaceChildren(...sorted.map(({ id, connections }) => {
    const li = document.createElement("li");
    li.dataset.user = id;
    li.append(textEl("span", "avatar", id.slice(0, 1).toUpperCase()), textEl("span", "name", id));
    if (id === me) li.append(textEl("span", "tag", "you"));
    if (connections > 1) li.append(textEl("span", "tag", `${connections} tabs`));
    return li;
  }));
  $("presence-count").textContent = String(users.length);
}

// ---------------------------------------------------------------------------
// Notifications: a second client on the user's notifications channel
// ---------------------------------------------------------------------------

/** @param {Hubbub} inbox */
function wireInbox(inbox) {
  const list = $("notifications");
  inbox.addEventListener("state", (event) => {
    const { state, transport } = /** @type {CustomEvent} */ (event).detail;
    log.inboxStates.push(state);
    showState($("inbox-status"), $("inbox-state"), $("inbox-transport"), state, transport);
  });
  inbox.addEventListener("welcome", () => {
    log.inboxWelcomes += 1;
  });
  inbox.addEventListener("error", (event) => {
    const detail = /** @type {CustomEvent} */ (event).detail;
    log.errors.push(detail);
    showBanner(describeError(detail));
  });
  inbox.addEventListener("message", (event) => {
    const message = /** @type {Message} */ (/** @type {CustomEvent} */ (event).detail);
    if (message.type !== "notification" || !message.id) return;
    if (list.querySelector(`[data-id="${CSS.escape(message.id)}"]`)) return;
    const broadcast = message.channel === "broadcast";
    const li = document.createElement("li");
    li.dataset.id = message.id;
    li.dataset.channel = String(message.channel ?? "");
    li.className = broadcast ? "note broadcast" : "note";
    const head = document.createElement("div");
    head.className = "msg-head";
    head.append(textEl("span", "kind", broadcast ? "broadcast" : "for you"), timeEl(message.timestamp));
    li.append(head, textEl("p", "text", notificationText(message.data)));
    list.prepend(li); // newest first
    li.classList.add("fresh");
    setTimeout(() => li.classList.remove("fresh"), 1500);
  });
}

/** @param {unknown} data */
function notificationText(data) {
  if (data && typeof data === "object" && "message" in data && typeof data.message === "string") return data.message;
  return typeof data === "string" ? data : JSON.stringify(data);
}

/** The curl commands, with a token of scope notify from the demo login. @param {string} me */
async function showCurl(me) {
  const getNotifyToken = demoLogin({ user: "ops", scope: "notify" });
  const base = HUB_URL;
  /** @param {object} body */
  const command = (token, body) => `curl -X POST ${base}/api/notifications -H 'Authorization: Bearer ${token}' `
    + `-H 'Content-Type: application/json' -d '${JSON.stringify(body)}'`;
  try {
    const token = await getNotifyToken();
    $("curl").textContent = command(token, { user: me, data: { message: "hi" } });
    $("curl-broadcast").textContent = command(token, { broadcast: true, data: { message: "Deploy at 5" } });
    // Keep the shown token valid: fetch a new one shortly before it runs out.
    const left = (jwtExpiry(token) ?? Date.now() + 3_600_000) - Date.now();
    setTimeout(() => void showCurl(me), Math.max(10_000, left - 120_000));
  } catch (error) {
    $("curl").textContent = `(no notify token: ${errorText(error)})`;
  }
}

for (const button of document.querySelectorAll("button.copy")) {
  button.addEventListener("click", async () => {
    const source = $(/** @type {HTMLElement} */ (button).dataset.copy ?? "");
    const ok = await copyText(source);
    button.textContent = ok ? "Copied" : "Select + copy";
    setTimeout(() => {
      button.textContent = "Copy";
    }, 1500);
  });
}

/** @param {HTMLElement} element */
async function copyText(element) {
  try {
    await navigator.clipboard.writeText(element.textContent ?? "");
    return true;
  } catch {
    // Not a secure context, or no permission: select it, and try the old way.
    const range = document.createRange();
    range.selectNodeContents(element);
    const selection = getSelection();
    selection?.removeAllRanges();
    selection?.addRange(range);
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    }
  }
}

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

/**
 * @param {HTMLElement} box @param {HTMLElement} stateEl @param {HTMLElement} transportEl
 * @param {string} state @param {string | null} transport
 */
function showState(box, stateEl, transportEl, state, transport) {
  box.dataset.state = state;
  stateEl.textContent = state;
  transportEl.textContent = transport ?? "—";
}

/** @param {string} text */
function showBanner(text) {
  const banner = $("banner");
  banner.textContent = text;
  banner.hidden = false;
}

function hideBanner() {
  $("banner").hidden = true;
}

/** @param {{ code: string, detail: string }} error */
function describeError({ code, detail }) {
  const what = {
    forbidden: "You may not join this room.",
    bad_request: "The server refused this request.",
    unauthorized: "Sign-in was refused; trying again.",
    token: "Could not sign in; trying again.",
    normal: "The server ended the session.",
  }[code] ?? `Problem (${code}).`;
  return detail ? `${what} ${detail}` : what;
}

/** @param {unknown} error */
function sendProblem(error) {
  const code = /** @type {{ code?: string }} */ (error)?.code;
  if (code === "rate_limited") return "slow down: not sent";
  if (code === "disconnected") return "connection lost: maybe not delivered";
  if (code === "queue_full") return "too many waiting: not sent";
  return `not sent: ${errorText(error)}`;
}

/** @param {unknown} error */
function errorText(error) {
  const e = /** @type {{ detail?: string, message?: string }} */ (error);
  return e?.detail || e?.message || String(error);
}

/**
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag @param {string} className @param {string} text
 * @returns {HTMLElementTagNameMap[K]}
 */
function textEl(tag, className, text) {
  const el = document.createElement(tag);
  el.className = className;
  el.textContent = text;
  return el;
}

/** @param {unknown} timestamp */
function timeEl(timestamp) {
  const el = document.createElement("time");
  const when = typeof timestamp === "string" ? new Date(timestamp) : new Date();
  if (!Number.isNaN(when.getTime())) {
    el.dateTime = when.toISOString();
    el.textContent = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    el.title = when.toLocaleString();
  }
  return el;
}

// The chat keeps the newest message in view, unless the reader scrolled up to read.
let stuckToBottom = true;
$("scroll").addEventListener("scroll", () => {
  const scroller = $("scroll");
  stuckToBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
});

function stickToBottom() {
  if (stuckToBottom) $("scroll").scrollTop = $("scroll").scrollHeight;
}

// ---------------------------------------------------------------------------
// Go
// ---------------------------------------------------------------------------

/** Asks once whether this server has demo login at all, before anything loops on it. */
async function demoLoginAvailable() {
  try {
    const reply = await fetch(`${HUB_PATH}/auth/demo-token`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ user: "probe" }),
    });
    return reply.status !== 403;
  } catch {
    return true; // unreachable now: the client's own retries will say so
  }
}

if (!await demoLoginAvailable()) showProductionNotice();
else if (!NAME.test(user)) showLogin(user ? "A name is 1-64 letters, digits, _ . or -." : "");
else if (!NAME.test(roomName)) showLogin("A room name is 1-64 letters, digits, _ . or -.");
else start(user, roomName, transport);
