// @ts-check
/**
 * React binding for hubbub.js, without importing React itself (no build step, no
 * second copy of React): pass the app's React in.
 *
 *   import * as React from "react";
 *   import { createUseWebSocket } from "/static/react.js";
 *   export const useWebSocket = createUseWebSocket(React);
 *
 *   const { connected, messages, sendMessage } = useWebSocket(null, {
 *     channel: { room: "lobby" }, getToken: () => auth.token(),
 *   });
 */
import { Hubbub } from "./hubbub.js";

/** @typedef {import("./hubbub.js").HubbubOptions} HubbubOptions */
/** @typedef {import("./hubbub.js").Message} Message */
/**
 * @typedef {Omit<HubbubOptions, "baseUrl"> & {
 *   maxMessages?: number,   // how many messages the hook keeps, default 200
 *   loadHistory?: boolean,  // rooms: load the latest history on connect and on resync, default true
 * }} HookOptions
 */

/**
 * @param {{ useState: Function, useEffect: Function, useRef: Function, useCallback: Function }} React
 */
export function createUseWebSocket(React) {
  const { useState, useEffect, useRef, useCallback } = React;

  /**
   * @param {string | null | undefined} baseUrl  the hub's origin; null for this page's origin
   * @param {HookOptions} options  read once per channel; getToken is always the latest one passed
   */
  return function useWebSocket(baseUrl, options) {
    const [status, setStatus] = useState({ state: "closed", transport: null });
    const [messages, setMessages] = useState(/** @type {Message[]} */ ([]));
    const clientRef = useRef(/** @type {Hubbub | null} */ (null));
    const optionsRef = useRef(options);
    optionsRef.current = options;
    // A new client only when what it subscribes to changes, not on every render.
    const key = JSON.stringify([baseUrl, options.channel, options.transport]);

    useEffect(() => {
      const { maxMessages = 200, loadHistory = true, ...rest } = optionsRef.current;
      const client = new Hubbub({
        ...rest,
        baseUrl: baseUrl ?? undefined,
        getToken: () => optionsRef.current.getToken(),
      });
      clientRef.current = client;
      setMessages((/** @type {Message[]} */ list) => (list.length ? [] : list)); // another channel: start afresh
      /** @param {Message[]} list */
      const keep = (list) => list.slice(-maxMessages);
      /** @type {Message[] | null} live messages that arrive while history loads */
      let arriving = null;

      const reload = async () => {
        if (!loadHistory || !("room" in rest.channel)) return;
        /** @type {Message[]} */
        const live = [];
        arriving = live;
        try {
          const history = await client.history({ limit: maxMessages });
          if (clientRef.current !== client) return; // unmounted or switched channel meanwhile
          const known = new Set(history.messages.map((m) => m.id));
          setMessages(keep([...history.messages, ...live.filter((m) => m.id === undefined || !known.has(m.id))]));
        } catch {
          // Keep what is on screen; the client reports connection trouble itself.
        } finally {
          if (arriving === live) arriving = null;
        }
      };

      let welcomed = false;
      client.addEventListener("state", (e) => setStatus(/** @type {CustomEvent} */ (e).detail));
      client.addEventListener("message", (e) => {
        const message = /** @type {CustomEvent<Message>} */ (e).detail;
        arriving?.push(message);
        setMessages((/** @type {Message[]} */ list) => keep([...list, message]));
      });
      client.addEventListener("welcome", () => {
        if (!welcomed) void reload();
        welcomed = true;
      });
      client.addEventListener("resync", () => void reload());
      client.connect();
      return () => {
        client.close();
        clientRef.current = null;
      };
    }, [key]);

    const sendMessage = useCallback(
      /** @param {string} text */
      (text) => clientRef.current?.send(text) ?? Promise.reject(new Error("useWebSocket: not mounted")),
      [],
    );

    return { connected: status.state === "open", ...status, messages, sendMessage };
  };
}
