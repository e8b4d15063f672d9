// Declarations of static/hubbub.js, written by hand for typed events and documentation;
// `make test` checks them against the implementation with tsc (tests/js/tsconfig.json).
// Guide: docs/client.md.

export type State = "connecting" | "open" | "reconnecting" | "closed";
export type Transport = "websocket" | "sse";
export type CloseAction = "stop" | "refresh" | "retry";
export type Channel = { room: string } | { notifications: true };
/** A channel of a client made without `channel`: one connection carries any set of them. */
export type ChannelName = `room:${string}` | "notifications";

export interface HubbubOptions {
  /** One room or the notifications (/ws/chat, /ws/notifications, …). Leave it out for one
   *  connection carrying any set of channels (`channels`, `subscribe()`), with one cursor. */
  channel?: Channel;
  /** Without `channel`: the channels to start with; more with `subscribe()`. */
  channels?: ChannelName[];
  /** Called before every (re)connect and HTTP call; must return a currently valid JWT.
   *  `refresh` is true when the hub refused the last token: never hand back a cached one then.
   *  Omit it when the host app signs users in with its own session cookie. */
  getToken?: (context: { refresh: boolean }) => string | Promise<string>;
  /** The hub's origin, plus a path prefix if any. Default: `location.origin`. */
  baseUrl?: string;
  /** Default "auto": WebSocket, SSE + POST when WebSocket fails twice before a welcome. */
  transport?: "auto" | Transport;
  /** Resume from this message id (e.g. one kept in sessionStorage). */
  since?: string | null;
  /** The shortest wait before a retry, and the backoff's base, in ms. Default 500. */
  minDelayMs?: number;
  /** Backoff cap in ms. Default 20000. */
  maxDelayMs?: number;
  /** Sends kept while disconnected; more reject with "queue_full". Default 100. */
  maxQueue?: number;
  /** Chat frames larger than this are refused locally ("too_large"). Default 65536. */
  maxMessageBytes?: number;
  /** A client made without `channel`: tabs of this origin giving the same key (the user's id)
   *  share one connection. One tab leads (a Web Lock) and relays over a BroadcastChannel; when
   *  it closes, the next tab leads and resumes from its last id. */
  shareTabs?: string;
  /** Implementations to use instead of the globals (Node, tests). */
  WebSocket?: typeof WebSocket;
  EventSource?: typeof EventSource;
  fetch?: typeof fetch;
  BroadcastChannel?: typeof BroadcastChannel;
  locks?: LockManager;
}

/** Every message the hub delivers carries these; `id` is the resume cursor. */
export interface Message {
  type: string;
  id?: string;
  channel?: string;
  sender?: string | null;
  timestamp?: string;
  [field: string]: unknown;
}
export interface ChatMessage extends Message {
  type: "chat";
  id: string;
  text: string;
}
export interface NotificationMessage extends Message {
  type: "notification";
  id: string;
  data: unknown;
}
export interface PresenceMessage extends Message {
  type: "join" | "leave";
  sender: string;
}
/** A crowded room's joins and leaves of an interval (PRESENCE_JOIN_LIMIT), with its user count. */
export interface PresenceUpdate extends Message {
  type: "presence";
  count: number;
  joined: string[];
  left: string[];
}

export interface Welcome {
  type: "welcome";
  /** A one-channel client's channel. */
  channel?: string;
  /** A multi-channel client's set, as the hub carries it. */
  channels?: ChannelName[];
  user: string;
  recovered: boolean | null;
  heartbeat: number;
}
export interface Resync {
  type: "resync";
  /** "no_cursor" when the client reconnected before any message gave it a cursor. */
  reason?: "no_cursor";
}
export interface Ack {
  type: "ack";
  id: string;
  ref: string;
}
export interface History {
  messages: Message[];
  recovered: boolean;
}
export interface StateDetail {
  state: State;
  transport: Transport | null;
}
export interface ErrorDetail {
  code: string;
  detail: string;
  status?: number;
  closeCode?: number;
  /** A channel the hub refused to add (it left the set). */
  channel?: ChannelName;
}

export interface HubbubEventMap {
  state: CustomEvent<StateDetail>;
  message: CustomEvent<Message>;
  welcome: CustomEvent<Welcome>;
  resync: CustomEvent<Resync>;
  error: CustomEvent<ErrorDetail>;
}

export declare class Hubbub extends EventTarget {
  constructor(options: HubbubOptions);
  readonly state: State;
  readonly transport: Transport | null;
  readonly lastId: string | null;
  readonly user: string | null;
  /** Starts (or after close(), resumes) the subscription. Add listeners first. */
  connect(): this;
  /** A `channel: {room}` client only. Resolves with the ack; rejects with a HubbubError. */
  send(text: string, ref?: string): Promise<Ack>;
  /** A client made without `channel`: adds a channel to its connection (WebSocket: a frame on
   *  the open connection; SSE: a reconnect with the new set, resuming from the last id). */
  subscribe(channel: ChannelName): Subscription;
  unsubscribe(channel: ChannelName): void;
  /** The channels of a multi-channel client's connection. */
  readonly channels: ChannelName[];
  /** Rooms only. GET /api/rooms/NAME/messages; does not move the cursor. */
  history(query?: { since?: string; limit?: number }): Promise<History>;
  close(): void;

  addEventListener<K extends keyof HubbubEventMap>(
    type: K,
    listener: (event: HubbubEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof HubbubEventMap>(
    type: K,
    listener: (event: HubbubEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

export interface SubscriptionEventMap {
  message: CustomEvent<Message>;
  /** The connection carries the channel (after each welcome, and after a subscribe frame). */
  subscribed: CustomEvent<{ channel: ChannelName }>;
  resync: CustomEvent<Resync>;
  /** The hub refused the channel (e.g. a room the token does not allow): it left the set. */
  error: CustomEvent<ErrorDetail>;
}

/** One channel of a multi-channel client: its messages, sharing the client's connection and cursor. */
export declare class Subscription extends EventTarget {
  constructor(
    channel: ChannelName,
    ops: {
      send(text: string, ref?: string): Promise<Ack>;
      history(query: { since?: string; limit?: number }): Promise<History>;
      unsubscribe(): void;
    },
  );
  readonly channel: ChannelName;
  /** Rooms only: posts a chat message to this room. */
  send(text: string, ref?: string): Promise<Ack>;
  /** Rooms only: GET /api/rooms/NAME/messages; does not move the cursor. */
  history(query?: { since?: string; limit?: number }): Promise<History>;
  unsubscribe(): void;

  addEventListener<K extends keyof SubscriptionEventMap>(
    type: K,
    listener: (event: SubscriptionEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof SubscriptionEventMap>(
    type: K,
    listener: (event: SubscriptionEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/**
 * Codes of the hub (see ERROR_CODES) and of the client: "queue_full", "closed",
 * "disconnected", "network", "not_a_room", "token", "bad_reply", "http_error".
 */
export declare class HubbubError extends Error {
  constructor(code: string, detail: string, extra?: { status?: number; closeCode?: number; retryAfterMs?: number });
  readonly code: string;
  readonly detail: string;
  readonly status: number | undefined;
  readonly closeCode: number | undefined;
  readonly retryAfterMs: number | undefined;
}

/** Retry delay in ms: minMs plus jitter uniform in [0, min(maxMs, minMs * 2^step)), at most maxMs. */
export declare function backoff(step: number, minMs?: number, maxMs?: number, random?: () => number): number;

/** Remembers delivered ids: same epoch and seq <= last is a repeat; a new epoch resets. */
export declare class Dedupe {
  constructor(limit?: number);
  readonly last: string | null;
  /** True for a repeat; otherwise records the id (and moves the cursor). */
  seen(id: string): boolean;
  /** Records an id without moving the cursor; true if it was known. */
  remember(id: string): boolean;
}

/** "EPOCH-SEQ" split at the last dash; null for an opaque id. */
export declare function parseId(id: string): { epoch: string; seq: number } | null;

export declare const CLOSE_CODES: Readonly<Record<number, { name: string; action: CloseAction }>>;
export declare const ERROR_CODES: Readonly<Record<string, number>>;
/** "stop" for 1000, 4400, 4403; "refresh" for 4401; "retry" for everything else. */
export declare function closeAction(code: number): CloseAction;
