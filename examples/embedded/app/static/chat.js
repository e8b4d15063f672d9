// The example's page: one room, signed in by this app's own session cookie (no getToken).
import { Hubbub } from "/rt/static/hubbub.js";

const $ = (id) => document.getElementById(id);
const chat = new Hubbub({ channel: { room: "lobby" }, baseUrl: `${location.origin}/rt` });

chat.addEventListener("state", (e) => { $("state").textContent = e.detail.state; });
chat.addEventListener("message", (e) => {
  const message = e.detail;
  if (message.type !== "chat") return;
  const item = document.createElement("li");
  item.textContent = `${message.sender}: ${message.text}`;
  $("messages").append(item);
});

$("send").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("text");
  const text = input.value;
  input.value = "";
  $("error").textContent = "";
  try {
    await chat.send(text);
  } catch (error) {
    $("error").textContent = error.detail ?? String(error);  // e.g. refused by the app's hook
  }
});

chat.connect();
