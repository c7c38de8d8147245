// Unit tests of ringcast.js against a fake WebSocket and a fake clock:
//   node --test crates/ringcastd/web/test/
// tests/tests/browser.rs runs them (and live.test.mjs against a real ringcastd).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RingcastClient, backoffDelay, trackTyping, FATAL_CLOSE_CODES } from '../ringcast.js';

/** A WebSocket double: records what the client sends; the test plays the server. */
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    FakeSocket.all.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code, reason) {
    this.closed = { code, reason };
  }
  open() {
    this.onopen?.();
  }
  push(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  serverClose(code, reason = '') {
    this.onclose?.({ code, reason });
  }
  last(type) {
    return [...this.sent].reverse().find((f) => f.type === type);
  }
}

/** A manual clock: timers fire only when the test advances time. */
function fakeClock() {
  let now = 0;
  let timers = [];
  let seq = 0;
  return {
    now: () => now,
    setTimeout: (fn, ms) => {
      const t = { at: now + ms, fn, id: seq++ };
      timers.push(t);
      return t;
    },
    clearTimeout: (t) => {
      timers = timers.filter((x) => x !== t);
    },
    pendingDelays: () => timers.map((t) => t.at - now),
    advance(ms) {
      const until = now + ms;
      for (;;) {
        timers.sort((a, b) => a.at - b.at || a.id - b.id);
        const t = timers[0];
        if (!t || t.at > until) break;
        timers.shift();
        now = t.at;
        t.fn();
      }
      now = until;
    },
  };
}

/** A client on fake sockets; `random` is fixed so backoff delays are known. */
function makeClient(extra = {}) {
  FakeSocket.all = [];
  const clock = fakeClock();
  const client = new RingcastClient({
    urls: ['ws://a/ws', 'ws://b/ws', 'ws://c/ws'],
    WebSocket: FakeSocket,
    random: () => 0.5,
    backoff: { baseMs: 100, maxMs: 1000 },
    setTimeout: clock.setTimeout,
    clearTimeout: clock.clearTimeout,
    now: clock.now,
    ...extra,
  });
  return { client, clock };
}

const tick = () => new Promise((r) => setImmediate(r));

/** Opens the current fake socket and answers `connect`. */
async function accept(node = 'node-a') {
  await tick();
  const ws = FakeSocket.all.at(-1);
  ws.open();
  const c = ws.last('connect');
  ws.push({ id: c.id, type: 'connected', client: '1', node, ping_interval_ms: 25000, version: '0.1.0' });
  return ws;
}

test('full-jitter backoff stays within [0, min(max, base * 2^attempt))', () => {
  const opts = { baseMs: 100, maxMs: 1000 };
  assert.equal(backoffDelay(0, opts, () => 0), 0);
  assert.equal(backoffDelay(0, opts, () => 0.999), 99);
  assert.equal(backoffDelay(3, opts, () => 0.5), 400);
  assert.equal(backoffDelay(10, opts, () => 0.5), 500, 'capped at maxMs');
  assert.equal(backoffDelay(1000, opts, () => 0.999), 999, 'huge attempts do not overflow');
});

test('connect sends the token, then subscribes; state events name the node', async () => {
  const states = [];
  const { client } = makeClient({ token: 'tok-1' });
  client.on('state', (s) => states.push(s));
  const sub = client.subscribe('chat:room', {});
  const ws = await accept('node-7');
  assert.equal(ws.url, 'ws://a/ws');
  assert.equal(ws.last('connect').token, 'tok-1');
  assert.equal(client.node, 'node-7');
  assert.deepEqual(
    states.map((s) => s.state),
    ['connected'],
  );
  const s = ws.last('subscribe');
  assert.deepEqual({ channel: s.channel, since: s.since }, { channel: 'chat:room', since: undefined });
  const subscribed = [];
  sub.on('subscribed', (e) => subscribed.push(e));
  ws.push({ id: s.id, type: 'subscribed', channel: 'chat:room', epoch: '42', offset: 7 });
  assert.deepEqual(sub.position, { epoch: '42', offset: 7 });
  assert.equal(subscribed[0].resumed, false);
  assert.equal(subscribed[0].recovered, null);
  client.close();
});

test('messages are delivered once, in order; duplicates and stale epochs are dropped', async () => {
  const { client } = makeClient();
  const sub = client.subscribe('chat:room');
  const ws = await accept();
  ws.push({ id: ws.last('subscribe').id, type: 'subscribed', channel: 'chat:room', epoch: '9', offset: 0 });
  const got = [];
  sub.on('message', (m) => got.push(m.offset));
  const msg = (epoch, offset) => ({ type: 'message', channel: 'chat:room', epoch, offset, data: { n: offset } });
  ws.push(msg('9', 1));
  ws.push(msg('9', 2));
  ws.push(msg('9', 2)); // duplicate
  ws.push(msg('9', 1)); // older
  ws.push(msg('8', 3)); // another epoch, never announced
  ws.push(msg('9', 3));
  assert.deepEqual(got, [1, 2, 3]);
  assert.equal(sub.dropped, 3);
  client.close();
});

test('reconnects to the next URL after the backoff and resumes with since', async () => {
  const { client, clock } = makeClient();
  const states = [];
  client.on('state', (s) => states.push(s));
  const sub = client.subscribe('scores:nba', { snapshot: true });
  let ws = await accept('node-a');
  assert.equal(ws.last('subscribe').snapshot, true);
  ws.push({ id: ws.last('subscribe').id, type: 'subscribed', channel: 'scores:nba', epoch: '5', offset: 10 });
  ws.push({ type: 'message', channel: 'scores:nba', epoch: '5', offset: 11, key: 'g1', data: 1 });

  ws.serverClose(1006);
  const down = states.at(-1);
  assert.equal(down.state, 'disconnected');
  assert.equal(down.retryInMs, 50, 'random 0.5 of base 100 on the first retry');
  clock.advance(49);
  assert.equal(FakeSocket.all.length, 1, 'no reconnect before the backoff');
  clock.advance(1);
  ws = await accept('node-b');
  assert.equal(ws.url, 'ws://b/ws', 'the next node of the list');
  const resume = ws.last('subscribe');
  assert.deepEqual(resume.since, { epoch: '5', offset: 11 });
  assert.equal(resume.snapshot, true, 'a resume asks for the snapshot when the page wants snapshots');

  const got = [];
  const subscribed = [];
  sub.on('message', (m) => got.push(m.offset));
  sub.on('subscribed', (e) => subscribed.push(e));
  ws.push({ id: resume.id, type: 'subscribed', channel: 'scores:nba', epoch: '5', offset: 13, recovered: true, replayed: 2 });
  ws.push({ type: 'message', channel: 'scores:nba', epoch: '5', offset: 12, data: 2 });
  ws.push({ type: 'message', channel: 'scores:nba', epoch: '5', offset: 13, data: 3 });
  assert.deepEqual(got, [12, 13], 'the replay is kept: the position stays at since until it arrives');
  assert.equal(subscribed[0].resumed, true);
  assert.equal(subscribed[0].recovered, true);
  assert.equal(client.node, 'node-b');
  client.close();
});

test('backoff grows per failed attempt and resets after a successful connect', async () => {
  const { client, clock } = makeClient();
  const delays = [];
  client.on('state', (s) => s.state === 'disconnected' && delays.push(s.retryInMs));
  await tick();
  for (let i = 0; i < 5; i++) {
    FakeSocket.all.at(-1).serverClose(1006);
    clock.advance(10_000);
    await tick();
  }
  assert.deepEqual(delays, [50, 100, 200, 400, 500]);
  assert.deepEqual(
    FakeSocket.all.map((w) => w.url),
    ['ws://a/ws', 'ws://b/ws', 'ws://c/ws', 'ws://a/ws', 'ws://b/ws', 'ws://c/ws'],
  );
  const ws = await accept();
  ws.serverClose(1001, 'going_away: reconnect');
  assert.equal(delays.at(-1), 50, 'a connection that succeeded resets the backoff');
  client.close();
});

test('recovered: false, resubscribed and gaps are surfaced so the page can refetch', async () => {
  const { client, clock } = makeClient();
  const sub = client.subscribe('chat:room');
  let ws = await accept();
  ws.push({ id: ws.last('subscribe').id, type: 'subscribed', channel: 'chat:room', epoch: '1', offset: 3 });
  const resets = [];
  const gaps = [];
  sub.on('reset', (r) => resets.push(r));
  sub.on('gap', (g) => gaps.push(g));

  ws.push({ type: 'gap', channel: 'chat:room', epoch: '1', from: 4, to: 6, reason: 'slow_consumer' });
  assert.deepEqual(sub.position, { epoch: '1', offset: 6 });
  ws.push({ type: 'message', channel: 'chat:room', epoch: '1', offset: 9, data: null });
  assert.deepEqual(
    gaps.map((g) => [g.from, g.to, g.reason]),
    [
      [4, 6, 'slow_consumer'],
      [7, 8, 'missing'],
    ],
  );

  ws.push({ type: 'resubscribed', channel: 'chat:room', epoch: '2', offset: 0, recovered: false, reason: 'epoch_changed' });
  assert.deepEqual(sub.position, { epoch: '2', offset: 0 });

  ws.serverClose(4008, 'slow_consumer: resume with since');
  clock.advance(1000);
  ws = await accept();
  const resume = ws.last('subscribe');
  assert.deepEqual(resume.since, { epoch: '2', offset: 0 });
  ws.push({
    id: resume.id,
    type: 'subscribed',
    channel: 'chat:room',
    epoch: '3',
    offset: 50,
    recovered: false,
    reason: 'epoch_changed',
    oldest: 40,
    newest: 50,
  });
  assert.deepEqual(
    resets.map((r) => [r.epoch, r.reason]),
    [
      ['2', 'epoch_changed'],
      ['3', 'epoch_changed'],
    ],
  );
  assert.equal(resets[1].oldest, 40);
  assert.deepEqual(sub.position, { epoch: '3', offset: 50 });
  client.close();
});

test('a publish is re-sent with the same idempotency key after a reconnect, then acked', async () => {
  const { client, clock } = makeClient();
  let ws = await accept();
  const acked = client.publish('chat:room', { text: 'hi' }, { key: 'k1' });
  const first = ws.last('publish');
  assert.match(first.idempotency_key, /^rc-[0-9a-f]{24}$/);
  assert.equal(first.key, 'k1');
  ws.serverClose(1006);
  clock.advance(1000);
  ws = await accept();
  const again = ws.last('publish');
  assert.equal(again.idempotency_key, first.idempotency_key);
  assert.deepEqual(again.data, { text: 'hi' });
  ws.push({ id: again.id, type: 'ack', channel: 'chat:room', epoch: '1', offset: 4, duplicate: true });
  assert.deepEqual(await acked, { id: again.id, type: 'ack', channel: 'chat:room', epoch: '1', offset: 4, duplicate: true });

  const refused = client.publish('chat:room', 1, { idempotencyKey: 'mine' });
  const p = ws.last('publish');
  assert.equal(p.idempotency_key, 'mine');
  ws.push({ id: p.id, type: 'error', error: { code: 'permission_denied', message: 'no' } });
  await assert.rejects(refused, (e) => e.code === 'permission_denied');
  client.close();
});

test('fatal close codes stop reconnecting', async () => {
  for (const code of [4001, 4002, 1002]) {
    assert.ok(FATAL_CLOSE_CODES.has(code));
    const { client, clock } = makeClient();
    const errors = [];
    client.on('error', (e) => errors.push(e.code));
    const ws = await accept();
    ws.serverClose(code, 'x');
    clock.advance(60_000);
    await tick();
    assert.equal(FakeSocket.all.length, 1, `no reconnect after ${code}`);
    assert.equal(client.state, 'closed');
    assert.deepEqual(errors, [`close_${code}`]);
  }
});

test('a silent server is detected by pings and the client reconnects', async () => {
  const { client, clock } = makeClient();
  const states = [];
  client.on('state', (s) => states.push([s.state, s.code]));
  const ws = await accept();
  clock.advance(25_000);
  assert.ok(ws.last('ping'), 'a ping command after ping_interval_ms');
  assert.equal(client.state, 'connected');
  clock.advance(25_000);
  assert.deepEqual(states.at(-1), ['disconnected', 4010], 'nothing heard for two ping periods');
  client.close();
});

test('presence requests, typing throttle and the typing tracker', async () => {
  const { client, clock } = makeClient();
  const sub = client.subscribe('chat:room');
  const ws = await accept();
  const who = client.presence('chat:room');
  const q = ws.last('presence');
  ws.push({ id: q.id, type: 'presence', channel: 'chat:room', clients: 1, users: 1, members: [], truncated: false });
  assert.equal((await who).clients, 1);

  const t1 = client.typing('chat:room');
  ws.push({ id: ws.last('typing').id, type: 'typing_sent', channel: 'chat:room' });
  assert.equal(await t1, true);
  assert.equal(await client.typing('chat:room'), false, 'at most once a second');
  clock.advance(1000);
  const t2 = client.typing('chat:room');
  ws.push({ id: ws.last('typing').id, type: 'typing_sent', channel: 'chat:room' });
  assert.equal(await t2, true);

  const shown = [];
  const stop = trackTyping(sub, (users) => shown.push(users), clock);
  ws.push({ type: 'typing', channel: 'chat:room', user: 'bob' });
  ws.push({ type: 'typing', channel: 'chat:room', user: 'alice' });
  clock.advance(2000);
  ws.push({ type: 'typing', channel: 'chat:room', user: 'bob' });
  clock.advance(1000);
  clock.advance(2000);
  assert.deepEqual(shown, [['bob'], ['alice', 'bob'], ['bob'], []]);
  stop();

  const joins = [];
  sub.on('join', (j) => joins.push(j.user));
  ws.push({ type: 'join', channel: 'chat:room', user: 'carol', info: { name: 'C' } });
  assert.deepEqual(joins, ['carol']);

  const dead = client.presence('chat:room');
  ws.serverClose(1006);
  await assert.rejects(dead, (e) => e.code === 'disconnected');
  client.close();
});

test('a refused subscription emits error and is dropped', async () => {
  const { client } = makeClient();
  const sub = client.subscribe('nope:x');
  const ws = await accept();
  const errors = [];
  sub.on('error', (e) => errors.push(e.code));
  ws.push({ id: ws.last('subscribe').id, type: 'error', error: { code: 'unknown_namespace', message: 'x' } });
  assert.deepEqual(errors, ['unknown_namespace']);
  assert.equal(sub.closed, true);
  assert.doesNotThrow(() => client.subscribe('nope:x'), 'the channel can be subscribed again');
  client.close();
});

test('expiring: the token callback gives a new token for refresh; a 4002 close reconnects with a new one', async () => {
  let calls = 0;
  const { client, clock } = makeClient({ token: async () => `tok-${++calls}` });
  const refreshed = [];
  client.on('refreshed', (e) => refreshed.push(e.expiresAt));
  let ws = await accept();
  assert.equal(ws.last('connect').token, 'tok-1');
  ws.push({ type: 'expiring', expires_at: 1893459600, in_ms: 30000 });
  await tick();
  const refresh = ws.last('refresh');
  assert.equal(refresh.token, 'tok-2');
  ws.push({ id: refresh.id, type: 'refreshed', expires_at: 1893463200 });
  await tick();
  assert.deepEqual(refreshed, [1893463200]);
  assert.equal(FakeSocket.all.length, 1, 'the same connection carries on');
  // Without a refresh in time the server closes 4002: with a callback, not fatal.
  ws.serverClose(4002, 'token_expired');
  clock.advance(1000);
  ws = await accept();
  assert.equal(ws.last('connect').token, 'tok-3');
  assert.equal(FakeSocket.all.length, 2);
  client.close();
});

test('a token callback is asked on every connect; user goes in the URL for load balancers', async () => {
  let calls = 0;
  const { client, clock } = makeClient({ token: async () => `tok-${++calls}`, user: 'al ice' });
  let ws = await accept();
  assert.equal(ws.url, 'ws://a/ws?user=al%20ice');
  assert.equal(ws.last('connect').token, 'tok-1');
  ws.serverClose(1006);
  clock.advance(1000);
  ws = await accept();
  assert.equal(ws.last('connect').token, 'tok-2');
  client.close();
});
