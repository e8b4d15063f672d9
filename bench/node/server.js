'use strict';
// The Node.js reference of the benchmark: one process, the `http` module and `ws`, no framework.
//
// The HTTP contract of bench/baseline_app.py, so the bench's clients drive it unchanged:
//   GET  /healthz                      -> 200 {"status":"ok","backend":"node"}
//   POST /api/rooms/NAME/messages      -> 202 {"id":"N"}; the message goes to every member
//   WS   /ws/chat?room=NAME            -> welcome, then the room's messages; a client frame
//                                         {"type":"chat","text":T} publishes T: the sender
//                                         gets {"type":"ack","id":ID}, every other member the message
//   GET  /sse/chat?room=NAME           -> text/event-stream: welcome, then `id: ID\ndata: JSON\n\n`
// A `token` query parameter and an Authorization header are accepted and ignored.
//
// Each message is serialised once, into one Buffer per wire format, and that Buffer is written
// to every member (ws frames it per socket; http adds a chunk header per write).
//
// Slow consumers: no policy beyond Node's and ws's defaults. A member that stops reading
// keeps its writes queued in user space without limit (res.write() and ws.send() buffer
// when the socket is full); nothing drops or closes it, except the ping/pong check below
// (a WebSocket that does not answer a ping within one interval is terminated).
//
// Heartbeats as hubbub's defaults (HEARTBEAT_INTERVAL 15 s), so idle CPU compares like with
// like: ONE timer for all members; every 15 s a ping to each WebSocket (terminated if it sent
// no pong since the previous ping, the pattern of the ws README) and `:\n\n` to each SSE stream.
//
// Usage: node bench/node/server.js --port N   (binds 127.0.0.1; SIGTERM closes and exits)

const http = require('http');
const { WebSocketServer } = require('ws');

const HOST = '127.0.0.1';
const HEARTBEAT_MS = 15000;
const POST_PATH = /^\/api\/rooms\/([^/?]+)\/messages(?:\?.*)?$/;
const SSE_COMMENT = Buffer.from(':\n\n');

function option(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const port = Number(option('--port', '8000'));

/** room name -> {ws: Set<WebSocket>, sse: Set<ServerResponse>} */
const rooms = new Map();
let nextId = 1;

function room(name) {
  let members = rooms.get(name);
  if (members === undefined) {
    members = { ws: new Set(), sse: new Set() };
    rooms.set(name, members);
  }
  return members;
}

function leave(name, kind, member) {
  const members = rooms.get(name);
  if (members === undefined) return;
  members[kind].delete(member);
  if (members.ws.size === 0 && members.sse.size === 0) rooms.delete(name);
}

function query(url) {
  const q = url.indexOf('?');
  return new URLSearchParams(q >= 0 ? url.slice(q + 1) : '');
}

function pathOf(url) {
  const q = url.indexOf('?');
  return q >= 0 ? url.slice(0, q) : url;
}

function welcome(name) {
  return JSON.stringify({ type: 'welcome', channel: `room:${name}` });
}

/** Builds the message, serialises it once, writes it to every member but `sender`; returns its id. */
function publish(name, text, sender) {
  const id = String(nextId++);
  const json = JSON.stringify({
    id, type: 'chat', text, channel: `room:${name}`, sender: null,
    timestamp: new Date().toISOString(), // RFC 3339, UTC, milliseconds
  });
  const members = rooms.get(name);
  if (members === undefined) return id;
  if (members.ws.size > 0) {
    const frame = Buffer.from(json);
    for (const ws of members.ws) {
      if (ws !== sender && ws.readyState === 1) ws.send(frame, { binary: false });
    }
  }
  if (members.sse.size > 0) {
    const event = Buffer.from(`id: ${id}\ndata: ${json}\n\n`);
    for (const res of members.sse) res.write(event);
  }
  return id;
}

function reply(res, status, body) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': data.length });
  res.end(data);
}

function postMessage(req, res, name) {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      reply(res, 400, { error: 'invalid JSON' });
      return;
    }
    if (body === null || typeof body !== 'object' || body.text === undefined) {
      reply(res, 400, { error: 'text is required' });
      return;
    }
    reply(res, 202, { id: publish(name, body.text, null) });
  });
}

function sseChat(req, res) {
  const name = query(req.url).get('room') || 'lobby';
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
  res.write(`data: ${welcome(name)}\n\n`);
  room(name).sse.add(res);
  res.on('close', () => leave(name, 'sse', res));
}

const server = http.createServer((req, res) => {
  const path = pathOf(req.url);
  if (req.method === 'POST') {
    const match = POST_PATH.exec(req.url);
    if (match !== null) {
      let name;
      try {
        name = decodeURIComponent(match[1]);
      } catch {
        reply(res, 400, { error: 'bad room name' });
        return;
      }
      postMessage(req, res, name);
      return;
    }
  } else if (req.method === 'GET') {
    if (path === '/healthz') {
      reply(res, 200, { status: 'ok', backend: 'node' });
      return;
    }
    if (path === '/sse/chat') {
      sseChat(req, res);
      return;
    }
  }
  reply(res, 404, { error: 'not found' });
});

// clientTracking off: the rooms are the registry. No compression: the bench's clients offer none.
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

server.on('upgrade', (req, socket, head) => {
  if (pathOf(req.url) !== '/ws/chat') {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    const name = query(req.url).get('room') || 'lobby';
    ws.isAlive = true;
    ws.on('pong', () => { ws.isAlive = true; });
    ws.on('error', () => {}); // 'close' follows: the member leaves there
    ws.on('close', () => leave(name, 'ws', ws));
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      let frame;
      try {
        frame = JSON.parse(data.toString('utf8'));
      } catch {
        return;
      }
      if (frame !== null && frame.type === 'chat' && typeof frame.text === 'string') {
        const id = publish(name, frame.text, ws);
        ws.send(JSON.stringify({ type: 'ack', id }));
      }
    });
    ws.send(welcome(name));
    room(name).ws.add(ws);
  });
});

const heartbeat = setInterval(() => {
  for (const members of rooms.values()) {
    for (const ws of members.ws) {
      if (!ws.isAlive) {
        ws.terminate();
        continue;
      }
      ws.isAlive = false;
      ws.ping();
    }
    for (const res of members.sse) res.write(SSE_COMMENT);
  }
}, HEARTBEAT_MS);

function shutdown() {
  clearInterval(heartbeat);
  server.close();
  for (const members of rooms.values()) {
    for (const ws of members.ws) ws.terminate();
    for (const res of members.sse) res.destroy();
  }
  process.exit(0);
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

server.listen(port, HOST);
