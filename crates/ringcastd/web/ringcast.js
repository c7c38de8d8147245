// ringcast.js: the browser (and Node) client of the ringcast WebSocket protocol.
//
// One dependency-free ES module, served by every node at /ringcast.js. It speaks
// proto/client.md: connect with a token, subscribe with automatic recovery (`since`
// from the last (epoch, offset) processed; duplicates dropped by (epoch, offset)),
// reconnect with full-jitter exponential backoff across a list of node URLs, and
// surface what could not be recovered (`gap`, `recovered: false`, `resubscribed`) as
// events so the page can refetch history. Publishes carry idempotency keys and are
// re-sent after a reconnect until acknowledged. Documented in docs/javascript.md.
//
// Tokens: give a callback as `token` and the client asks it on every connect, when the
// server pushes `expiring` (then it sends `refresh`, and the session carries on), and
// before reconnecting after a 4002 (token expired) close.
//
// Deliberately not here: deltas (subscriptions never ask for them) and pattern
// subscriptions. Time, randomness and the WebSocket class are options, so the tests
// drive the client with a fake socket and a fake clock.

/** Close codes after which reconnecting cannot help (proto/client.md, "Close codes"). */
export const FATAL_CLOSE_CODES = new Set([1002, 1003, 1007, 1009, 4001, 4002, 4003, 4009]);

/**
 * A tiny typed event emitter: `on(type, fn)` returns a function that removes `fn`.
 * @template {Record<string, any>} E
 */
export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._handlers = new Map();
  }

  /**
   * @template {keyof E & string} K
   * @param {K} type
   * @param {(event: E[K]) => void} fn
   * @returns {() => void} removes the handler
   */
  on(type, fn) {
    let set = this._handlers.get(type);
    if (!set) {
      set = new Set();
      this._handlers.set(type, set);
    }
    set.add(fn);
    return () => set.delete(fn);
  }

  /**
   * @template {keyof E & string} K
   * @param {K} type
   * @param {E[K]} event
   */
  emit(type, event) {
    for (const fn of [...(this._handlers.get(type) ?? [])]) {
      try {
        fn(event);
      } catch (e) {
        // A failing handler must not break the client's state machine.
        console.error(`ringcast: a "${type}" handler threw`, e);
      }
    }
  }
}

/**
 * Full-jitter exponential backoff: a uniformly random delay in
 * [0, min(maxMs, baseMs * 2^attempt)).
 * @param {number} attempt 0 for the first retry
 * @param {{baseMs: number, maxMs: number}} opts
 * @param {() => number} random a source of [0, 1)
 */
export function backoffDelay(attempt, { baseMs, maxMs }, random) {
  const cap = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * cap);
}

/** A random idempotency key: 24 hex characters of `crypto.getRandomValues`, or Math.random. */
export function newIdempotencyKey() {
  const bytes = new Uint8Array(12);
  if (globalThis.crypto?.getRandomValues) {
    globalThis.crypto.getRandomValues(bytes);
  } else {
    for (let i = 0; i < bytes.length; i++) bytes[i] = Math.floor(Math.random() * 256);
  }
  return 'rc-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/**
 * @typedef {{epoch: string, offset: number}} Position
 * @typedef {{channel: string, epoch: string, offset: number, key?: string, data: any}} Message
 * @typedef {{channel: string, epoch: string, offset: number, entries: Message[]}} Snapshot
 * @typedef {{channel: string, epoch: string, from: number, to: number, reason: string}} Gap
 * @typedef {{channel: string, epoch: string, offset: number, resumed: boolean, recovered: boolean|null,
 *            reason?: string, replayed?: number, oldest?: number, newest?: number}} Subscribed
 * @typedef {{channel: string, epoch: string, offset: number, reason: string, oldest?: number, newest?: number}} Reset
 * @typedef {{channel: string, user: string, info?: any}} PresenceEvent
 * @typedef {{code: string, message: string}} ErrorEvent
 *
 * @typedef {{message: Message, snapshot: Snapshot, gap: Gap, subscribed: Subscribed, reset: Reset,
 *            join: PresenceEvent, leave: PresenceEvent, typing: PresenceEvent, error: ErrorEvent}} SubscriptionEvents
 *
 * @typedef {'connecting'|'connected'|'disconnected'|'closed'} ConnectionState
 * @typedef {{state: ConnectionState, url?: string, node?: string, client?: string, attempt?: number,
 *            retryInMs?: number, code?: number, reason?: string}} StateEvent
 * @typedef {{expiresAt: number|null}} RefreshedEvent
 * @typedef {{state: StateEvent, error: ErrorEvent, refreshed: RefreshedEvent}} ClientEvents
 */

/** An error reply from the server, with its stable `code`. */
export class RingcastError extends Error {
  /** @param {string} code @param {string} message */
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = 'RingcastError';
    this.code = code;
  }
}

/**
 * One channel subscription. It survives reconnects: the client resubscribes with
 * `since` = the last position processed.
 * @extends {Emitter<SubscriptionEvents>}
 */
export class Subscription extends Emitter {
  /** @param {RingcastClient} client @param {string} channel @param {{since?: Position, snapshot?: boolean}} opts */
  constructor(client, channel, opts) {
    super();
    this.client = client;
    this.channel = channel;
    /** The wanted snapshot on fresh subscribes (default: the server's default). */
    this.snapshot = opts.snapshot;
    /** @type {Position|null} the last position processed */
    this.position = opts.since ? { epoch: String(opts.since.epoch), offset: Number(opts.since.offset) } : null;
    /** Whether the subscription is live on the current connection. */
    this.active = false;
    /** Frames dropped as duplicates or from another epoch (for diagnostics). */
    this.dropped = 0;
    /** Whether `unsubscribe` was called. */
    this.closed = false;
    /** While a resume's replay is under way: the offset it ends at. */
    this._replayUntil = 0;
  }

  /** Stops the subscription (and tells the server when connected). */
  unsubscribe() {
    if (this.closed) return;
    this.closed = true;
    this.client._dropSubscription(this);
  }

  /** @param {any} f the `subscribed` reply */
  _onSubscribed(f) {
    const resumed = this.position !== null;
    const recovered = f.recovered === undefined ? null : f.recovered;
    this.active = true;
    if (recovered !== true) {
      // Fresh, or not recovered: live messages continue after the reply's position.
      this.position = { epoch: String(f.epoch), offset: Number(f.offset) };
    }
    this.emit('subscribed', {
      channel: this.channel,
      epoch: String(f.epoch),
      offset: Number(f.offset),
      resumed,
      recovered,
      reason: f.reason,
      replayed: f.replayed,
      oldest: f.oldest,
      newest: f.newest,
    });
    if (resumed && recovered === false) {
      this.emit('reset', {
        channel: this.channel,
        epoch: String(f.epoch),
        offset: Number(f.offset),
        reason: f.reason ?? 'epoch_changed',
        oldest: f.oldest,
        newest: f.newest,
      });
    }
  }

  /** @param {any} f a `message` push */
  _onMessage(f) {
    const epoch = String(f.epoch);
    const offset = Number(f.offset);
    const p = this.position;
    if (p && epoch !== p.epoch) {
      // Epoch changes are always announced (`subscribed`, `resubscribed`) before any
      // message of the new epoch; a message of another epoch is a stale leftover.
      this.dropped++;
      return;
    }
    if (p && offset <= p.offset) {
      this.dropped++;
      return;
    }
    if (p && offset > p.offset + 1) {
      // The server announces every hole with a gap; report one it did not, rather
      // than skip silently.
      this.emit('gap', { channel: this.channel, epoch, from: p.offset + 1, to: offset - 1, reason: 'missing' });
    }
    this.position = { epoch, offset };
    /** @type {Message} */
    const m = { channel: this.channel, epoch, offset, data: f.data };
    if (f.key !== undefined) m.key = f.key;
    this.emit('message', m);
  }

  /** @param {any} f a `snapshot` push */
  _onSnapshot(f) {
    const epoch = String(f.epoch);
    const offset = Number(f.offset);
    if (!this.position || this.position.epoch !== epoch || this.position.offset < offset) {
      this.position = { epoch, offset };
    }
    const entries = (f.entries ?? []).map((e) => {
      const m = { channel: this.channel, epoch: String(e.epoch), offset: Number(e.offset), data: e.data };
      if (e.key !== undefined) m.key = e.key;
      return m;
    });
    this.emit('snapshot', { channel: this.channel, epoch, offset, entries });
  }

  /** @param {any} f a `gap` push */
  _onGap(f) {
    const epoch = String(f.epoch);
    const to = Number(f.to);
    if (this.position && this.position.epoch === epoch && this.position.offset < to) {
      this.position = { epoch, offset: to };
    }
    this.emit('gap', { channel: this.channel, epoch, from: Number(f.from), to, reason: f.reason });
  }

  /** @param {any} f a `resubscribed` push */
  _onResubscribed(f) {
    this.position = { epoch: String(f.epoch), offset: Number(f.offset) };
    this.emit('reset', {
      channel: this.channel,
      epoch: String(f.epoch),
      offset: Number(f.offset),
      reason: f.reason ?? 'epoch_changed',
      oldest: f.oldest,
      newest: f.newest,
    });
  }

  /** The subscribe command for the current connection. */
  _command() {
    const cmd = { type: 'subscribe', channel: this.channel };
    if (this.position) {
      cmd.since = { epoch: this.position.epoch, offset: this.position.offset };
      // A resume gets a snapshot only when asked; ask when the page wants snapshots,
      // so a resume that is not recovered still rebuilds the state.
      if (this.snapshot) cmd.snapshot = true;
    } else if (this.snapshot !== undefined) {
      cmd.snapshot = this.snapshot;
    }
    return cmd;
  }
}

/**
 * The client: one WebSocket at a time, to one of `urls`, reconnecting on its own.
 * @extends {Emitter<ClientEvents>}
 */
export class RingcastClient extends Emitter {
  /**
   * @param {{
   *   urls: string[]|string,
   *   token?: string|null|(() => string|null|Promise<string|null>),
   *   user?: string,
   *   backoff?: {baseMs?: number, maxMs?: number},
   *   WebSocket?: any,
   *   random?: () => number,
   *   setTimeout?: (fn: Function, ms: number) => any,
   *   clearTimeout?: (t: any) => void,
   *   now?: () => number,
   *   connect?: boolean,
   * }} opts
   */
  constructor(opts) {
    super();
    const urls = typeof opts.urls === 'string' ? [opts.urls] : [...(opts.urls ?? [])];
    if (urls.length === 0) throw new TypeError('ringcast: give at least one node URL (ws://host:port/ws)');
    this.urls = urls;
    this.token = opts.token ?? null;
    this.user = opts.user;
    this.backoff = { baseMs: opts.backoff?.baseMs ?? 500, maxMs: opts.backoff?.maxMs ?? 15000 };
    this._WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    if (!this._WebSocket) throw new TypeError('ringcast: no WebSocket class (pass opts.WebSocket)');
    this._random = opts.random ?? Math.random;
    this._setTimeout = opts.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
    this._clearTimeout = opts.clearTimeout ?? ((t) => clearTimeout(t));
    this._now = opts.now ?? (() => Date.now());
    /** @type {ConnectionState} */
    this.state = 'disconnected';
    /** The node id of the current connection (from `connected`). */
    this.node = null;
    /** The URL of the current (or last) connection. */
    this.url = null;
    this._urlIndex = 0;
    this._attempt = 0;
    this._ws = null;
    this._nextId = 1;
    /** @type {Map<number, {resolve: Function, reject: Function, frame: any, keep: boolean, onReply?: Function}>} */
    this._pending = new Map();
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    this._typingSent = new Map();
    this._retryTimer = null;
    this._pingTimer = null;
    this._lastHeard = 0;
    this._pingIntervalMs = 25000;
    this._closedByUser = false;
    if (opts.connect !== false) this.connect();
  }

  /** Opens the connection (done by the constructor unless `connect: false`). */
  connect() {
    if (this._ws || this._retryTimer) return;
    this._closedByUser = false;
    this._open();
  }

  /** Closes for good: no reconnect; pending requests fail. */
  close() {
    this._closedByUser = true;
    if (this._retryTimer) this._clearTimeout(this._retryTimer);
    this._retryTimer = null;
    const ws = this._ws;
    this._teardown();
    if (ws) {
      try {
        ws.close(1000, 'normal');
      } catch {
        // Already closed.
      }
    }
    for (const [, p] of this._pending) p.reject(new RingcastError('closed', 'the client was closed'));
    this._pending.clear();
    this._setState({ state: 'closed' });
  }

  /**
   * Subscribes to `channel`. Events arrive on the returned subscription.
   * @param {string} channel
   * @param {{since?: Position, snapshot?: boolean}} [opts]
   * @returns {Subscription}
   */
  subscribe(channel, opts = {}) {
    if (this._subs.has(channel)) throw new RingcastError('already_subscribed', `already subscribed to ${channel}`);
    const sub = new Subscription(this, channel, opts);
    this._subs.set(channel, sub);
    if (this.state === 'connected') this._sendSubscribe(sub);
    return sub;
  }

  /**
   * Publishes `data`; resolves with the `ack` ({channel, epoch, offset, duplicate}).
   * An idempotency key is generated when none is given, and the publish is re-sent
   * after a reconnect until acknowledged, so it is sequenced at most once.
   * @param {string} channel
   * @param {any} data
   * @param {{key?: string, idempotencyKey?: string}} [opts]
   */
  publish(channel, data, opts = {}) {
    const frame = { type: 'publish', channel, data, idempotency_key: opts.idempotencyKey ?? newIdempotencyKey() };
    if (opts.key !== undefined) frame.key = opts.key;
    return this._request(frame, true);
  }

  /** Who is subscribed to `channel` (the `presence` reply). */
  presence(channel) {
    return this._request({ type: 'presence', channel }, false);
  }

  /** Counts only (the `presence_stats` reply). */
  presenceStats(channel) {
    return this._request({ type: 'presence_stats', channel }, false);
  }

  /** A page of history (the `history` reply), oldest first. */
  history(channel, { before, limit } = {}) {
    const frame = { type: 'history', channel };
    if (before !== undefined) frame.before = before;
    if (limit !== undefined) frame.limit = limit;
    return this._request(frame, false);
  }

  /**
   * Tells the channel that this user is typing, at most once a second per channel
   * (the server drops more anyway). Resolves to true when a notice was sent.
   * @param {string} channel
   */
  async typing(channel) {
    const now = this._now();
    if (now - (this._typingSent.get(channel) ?? -Infinity) < 1000) return false;
    this._typingSent.set(channel, now);
    await this._request({ type: 'typing', channel }, false);
    return true;
  }

  // ---- internals ----------------------------------------------------------------

  _setState(ev) {
    this.state = ev.state;
    this.emit('state', ev);
  }

  _request(frame, keep) {
    return new Promise((resolve, reject) => {
      if (this._closedByUser) {
        reject(new RingcastError('closed', 'the client was closed'));
        return;
      }
      const id = this._nextId++;
      this._pending.set(id, { resolve, reject, frame, keep });
      if (this.state === 'connected') this._send({ ...frame, id });
      else if (!keep) {
        this._pending.delete(id);
        reject(new RingcastError('disconnected', 'not connected'));
      }
    });
  }

  _send(frame) {
    try {
      this._ws?.send(JSON.stringify(frame));
    } catch {
      // The close event follows and reconnects.
    }
  }

  _sendSubscribe(sub) {
    const id = this._nextId++;
    sub.active = false;
    this._pending.set(id, {
      frame: null,
      keep: false,
      resolve: (f) => sub._onSubscribed(f),
      reject: (e) => {
        if (e.code === 'disconnected') return; // resubscribed on reconnect
        sub.emit('error', { code: e.code, message: e.message });
        if (!sub.closed) {
          sub.closed = true;
          this._subs.delete(sub.channel);
        }
      },
    });
    this._send({ ...sub._command(), id });
  }

  _dropSubscription(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    if (this.state === 'connected') {
      this._request({ type: 'unsubscribe', channel: sub.channel }, false).catch(() => {});
    }
  }

  async _open() {
    const url = this.urls[this._urlIndex % this.urls.length];
    this.url = url;
    this._setState({ state: 'connecting', url, attempt: this._attempt });
    let token = this.token;
    if (typeof token === 'function') {
      try {
        token = await token();
      } catch (e) {
        this._scheduleRetry(0, `token callback failed: ${e}`);
        return;
      }
    }
    if (this._closedByUser) return;
    let ws;
    try {
      ws = new this._WebSocket(this.user ? `${url}${url.includes('?') ? '&' : '?'}user=${encodeURIComponent(this.user)}` : url);
    } catch (e) {
      this._scheduleRetry(0, `cannot open ${url}: ${e}`);
      return;
    }
    this._ws = ws;
    ws.onopen = () => {
      this._lastHeard = this._now();
      const id = this._nextId++;
      const connect = { type: 'connect', id };
      if (token) connect.token = token;
      this._pending.set(id, {
        frame: null,
        keep: false,
        resolve: (f) => this._onConnected(f, url),
        reject: (e) => this.emit('error', { code: e.code, message: e.message }),
      });
      this._send(connect);
    };
    ws.onmessage = (ev) => this._onFrame(ws, ev.data);
    ws.onclose = (ev) => this._onClose(ws, ev.code, ev.reason);
    ws.onerror = () => {
      // A close event always follows; it carries the code.
    };
  }

  _onConnected(f, url) {
    this._attempt = 0;
    this.node = f.node ?? null;
    this._pingIntervalMs = Number(f.ping_interval_ms) || 25000;
    this._setState({ state: 'connected', url, node: this.node, client: f.client });
    this._startPings();
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const [id, p] of this._pending) {
      if (p.keep && p.frame) this._send({ ...p.frame, id });
    }
  }

  _startPings() {
    const tick = () => {
      if (!this._ws) return;
      if (this._now() - this._lastHeard >= 2 * this._pingIntervalMs) {
        // Nothing heard for two ping periods: the server or the path is dead.
        const ws = this._ws;
        this._onClose(ws, 4010, 'no frame from the server');
        try {
          ws.close();
        } catch {
          // Already closed.
        }
        return;
      }
      this._send({ type: 'ping', id: this._nextId++ });
      this._pingTimer = this._setTimeout(tick, this._pingIntervalMs);
    };
    this._pingTimer = this._setTimeout(tick, this._pingIntervalMs);
  }

  _onFrame(ws, text) {
    if (ws !== this._ws) return;
    this._lastHeard = this._now();
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      this.emit('error', { code: 'bad_frame', message: 'the server sent a frame that is not JSON' });
      return;
    }
    if (f.id !== undefined) {
      const p = this._pending.get(f.id);
      if (!p) return; // pong, or a reply to an abandoned request
      this._pending.delete(f.id);
      if (f.type === 'error') p.reject(new RingcastError(f.error?.code ?? 'internal', f.error?.message ?? ''));
      else p.resolve(f);
      return;
    }
    if (f.type === 'error') {
      this.emit('error', { code: f.error?.code ?? 'internal', message: f.error?.message ?? '' });
      return;
    }
    if (f.type === 'expiring') {
      this._refresh(ws);
      return;
    }
    const sub = f.channel !== undefined ? this._subs.get(f.channel) : undefined;
    if (!sub) return; // the registry channel, or a channel already unsubscribed
    switch (f.type) {
      case 'message':
        sub._onMessage(f);
        break;
      case 'snapshot':
        sub._onSnapshot(f);
        break;
      case 'gap':
        sub._onGap(f);
        break;
      case 'resubscribed':
        sub._onResubscribed(f);
        break;
      case 'subscribed':
        sub._onSubscribed(f);
        break;
      case 'join':
      case 'leave':
      case 'typing': {
        const ev = { channel: f.channel, user: f.user };
        if (f.info !== undefined) ev.info = f.info;
        sub.emit(f.type, ev);
        break;
      }
      default:
        break;
    }
  }

  /** The token expires soon: ask the callback for a new one and send `refresh`. */
  async _refresh(ws) {
    if (typeof this.token !== 'function') return; // a fixed token cannot be renewed
    let token;
    try {
      token = await this.token();
    } catch (e) {
      this.emit('error', { code: 'refresh_failed', message: `token callback failed: ${e}` });
      return;
    }
    if (ws !== this._ws || !token) return;
    try {
      const reply = await this._request({ type: 'refresh', token }, false);
      this.emit('refreshed', { expiresAt: reply.expires_at ?? null });
    } catch (e) {
      this.emit('error', { code: 'refresh_failed', message: `${e.code ?? ''}: ${e.message}` });
    }
  }

  _teardown() {
    if (this._pingTimer) this._clearTimeout(this._pingTimer);
    this._pingTimer = null;
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    }
    for (const sub of this._subs.values()) sub.active = false;
    // Requests that cannot survive a reconnect fail now; publishes wait for the next
    // connection (they carry idempotency keys).
    for (const [id, p] of this._pending) {
      if (!p.keep) {
        this._pending.delete(id);
        p.reject(new RingcastError('disconnected', 'the connection closed'));
      }
    }
  }

  _onClose(ws, code, reason) {
    if (ws !== this._ws) return;
    this._teardown();
    if (this._closedByUser) return;
    // An expired token is fatal only when there is no callback to get a new one.
    if (FATAL_CLOSE_CODES.has(code) && !(code === 4002 && typeof this.token === 'function')) {
      for (const [, p] of this._pending) p.reject(new RingcastError('closed', `closed with ${code} ${reason}`));
      this._pending.clear();
      this._setState({ state: 'closed', code, reason });
      this.emit('error', { code: `close_${code}`, message: reason || `the server closed with ${code}` });
      return;
    }
    this._scheduleRetry(code, reason);
  }

  _scheduleRetry(code, reason) {
    this._ws = null;
    const delay = backoffDelay(this._attempt, this.backoff, this._random);
    this._attempt++;
    // The next attempt goes to the next node of the list.
    this._urlIndex = (this._urlIndex + 1) % this.urls.length;
    this._setState({ state: 'disconnected', code, reason, retryInMs: delay, attempt: this._attempt });
    this._retryTimer = this._setTimeout(() => {
      this._retryTimer = null;
      if (!this._closedByUser) this._open();
    }, delay);
  }
}

/**
 * Tracks who is typing on a subscription: a user is shown for 3 s after their last
 * `typing` push (proto/client.md). `onChange` gets the sorted user list.
 * @param {Subscription} sub
 * @param {(users: string[]) => void} onChange
 * @param {{hideAfterMs?: number, setTimeout?: Function, clearTimeout?: Function}} [opts]
 * @returns {() => void} stops tracking
 */
export function trackTyping(sub, onChange, opts = {}) {
  const hideAfter = opts.hideAfterMs ?? 3000;
  const set = opts.setTimeout ?? ((fn, ms) => setTimeout(fn, ms));
  const clear = opts.clearTimeout ?? ((t) => clearTimeout(t));
  const timers = new Map();
  const changed = () => onChange([...timers.keys()].sort());
  const off = sub.on('typing', ({ user }) => {
    const had = timers.has(user);
    if (had) clear(timers.get(user));
    timers.set(
      user,
      set(() => {
        timers.delete(user);
        changed();
      }, hideAfter),
    );
    if (!had) changed();
  });
  return () => {
    off();
    for (const t of timers.values()) clear(t);
    timers.clear();
  };
}
