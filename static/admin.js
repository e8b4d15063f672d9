// @ts-check
// The operator page: one SSE stream of snapshots (/admin/stream), the last 5 minutes of
// publish and delivery rates drawn as lines. The token stays in this tab's sessionStorage.

const $ = (/** @type {string} */ id) => /** @type {HTMLElement} */ (document.getElementById(id));
const WINDOW = 300; // points kept: one a second
const HUB_PATH = new URL(".", location.href).pathname.replace(/\/+$/, "").replace(/\/admin$/, "");

/** @type {{ published: number[], deliveries: number[] }} */
const rates = { published: [], deliveries: [] };
/** @type {{ published: number, deliveries: number } | null} */
let last = null;

function signIn() {
  $("sign-in").hidden = false;
  $("sign-in").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = /** @type {HTMLInputElement} */ ($("token")).value;
    sessionStorage.setItem("hubbub-admin-token", token);
    watch(token);
  });
}

/** @param {string} token */
function watch(token) {
  const source = new EventSource(`${HUB_PATH}/admin/stream?token=${encodeURIComponent(token)}`);
  source.onopen = () => {
    $("sign-in").hidden = true;
    $("board").hidden = false;
    feed("open", "live");
  };
  source.onmessage = (event) => show(JSON.parse(event.data));
  source.onerror = async () => {
    const probe = await fetch(`${HUB_PATH}/admin/stream`, { headers: { Authorization: `Bearer ${token}` } })
      .then((reply) => reply.status, () => 0);
    if (probe === 401) {
      source.close();
      sessionStorage.removeItem("hubbub-admin-token");
      $("sign-in-error").textContent = "That is not the ADMIN_TOKEN.";
      signIn();
    } else {
      feed("reconnecting", "reconnecting…");  // EventSource retries by itself
    }
  };
}

/** @param {string} state @param {string} text */
function feed(state, text) {
  $("feed").dataset.state = state;
  $("feed").textContent = text;
}

/** @param {any} s a snapshot */
function show(s) {
  $("ws").textContent = String(s.connections.websocket);
  $("sse").textContent = String(s.connections.sse);
  const total = s.connections.websocket + s.connections.sse;
  $("capacity").textContent = s.max_connections ? `${Math.round((100 * total) / s.max_connections)}%` : "–";
  $("slow").textContent = String(s.slow_consumers);
  $("backend").textContent = `${s.backend.name} ${s.backend.up ? "up" : "DOWN"}`;
  $("backend").dataset.up = String(s.backend.up);
  $("rtt").textContent = `ping ${s.backend.rtt_ms} ms${s.draining ? " · draining" : ""}`;
  for (const key of /** @type {const} */ (["published", "deliveries"])) {
    const rate = last ? Math.max(0, s[key] - last[key]) : 0;
    rates[key].push(rate);
    if (rates[key].length > WINDOW) rates[key].shift();
    $(key).textContent = String(s[key]);
    $(`${key}-rate`).textContent = String(rate);
    draw($(`${key}-chart`), rates[key]);
  }
  last = { published: s.published, deliveries: s.deliveries };
  $("rooms").replaceChildren(...s.busiest_rooms.map((/** @type {any} */ r) => {
    const item = document.createElement("li");
    item.textContent = `#${r.room} · ${r.subscribers}`;
    return item;
  }));
}

/** @param {HTMLElement} svg @param {number[]} points */
function draw(svg, points) {
  const top = Math.max(1, ...points);
  const step = 300 / (WINDOW - 1);
  const start = WINDOW - points.length;
  const line = points.map((v, i) => `${((start + i) * step).toFixed(1)},${(58 - (56 * v) / top).toFixed(1)}`);
  /** @type {SVGPolylineElement} */ (svg.querySelector("polyline")).setAttribute("points", line.join(" "));
}

const saved = sessionStorage.getItem("hubbub-admin-token");
if (saved) watch(saved);
else signIn();
