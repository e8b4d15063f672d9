// An app written against static/hubbub.d.ts, as docs/client.md shows: it must type-check.
import { CLOSE_CODES, Hubbub, HubbubError, backoff, closeAction } from "../../../static/hubbub.js";
import type { ChannelName, ChatMessage, CloseAction, State, Subscription } from "../../../static/hubbub.js";

const hub = new Hubbub({
  channel: { room: "lobby" },
  getToken: async ({ refresh }) => (refresh ? "fresh" : "cached"),
  transport: "auto",
});
hub.addEventListener("message", (event) => {
  const id: string | undefined = event.detail.id;
  if (event.detail.type === "chat") console.log((event.detail as ChatMessage).text, id);
});
hub.addEventListener("state", (event) => {
  const state: State = event.detail.state;
  console.log(state, event.detail.transport);
});
hub.addEventListener("error", (event) => console.log(event.detail.code, event.detail.closeCode));
hub.connect().send("hi").then((ack) => ack.id.toUpperCase()).catch((error: unknown) => {
  if (error instanceof HubbubError) console.log(error.code, error.retryAfterMs);
});
hub.history({ limit: 10 }).then(({ messages, recovered }) => console.log(messages.length, recovered));

const restart: CloseAction = CLOSE_CODES[1012].action;
const action: CloseAction = closeAction(4401);
const delay: number = backoff(2);
console.log(restart, action, delay, hub.lastId);

new Hubbub({ channel: { notifications: true } }); // a cookie session: no getToken

// One connection for many channels.
const page = new Hubbub({ channels: ["notifications"], getToken: () => "token" });
const lobby: Subscription = page.subscribe("room:lobby");
lobby.addEventListener("message", (event) => console.log(event.detail.channel));
lobby.addEventListener("error", (event) => console.log(event.detail.channel, event.detail.code));
lobby.send("hi").then((ack) => ack.id);
const names: ChannelName[] = page.channels;
page.unsubscribe("room:lobby");
console.log(names);
