// ringcast.js against a real ringcastd. tests/tests/browser.rs starts the node and runs
//   RINGCAST_TEST_NODE=http://127.0.0.1:PORT RINGCAST_TEST_API_KEY=KEY \
//     node --experimental-websocket --test crates/ringcastd/web/test/
// Without RINGCAST_TEST_NODE these tests are skipped (the Rust test checks that none was).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RingcastClient } from '../ringcast.js';

const node = process.env.RINGCAST_TEST_NODE;
const apiKey = process.env.RINGCAST_TEST_API_KEY;
const skip = node ? false : 'RINGCAST_TEST_NODE is not set';
const wsUrl = node ? node.replace(/^http/, 'ws') + '/ws' : '';

async function httpPublish(channel, data) {
  const r = await fetch(`${node}/v1/publish`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  });
  assert.equal(r.status, 200, await r.clone().text());
  return r.json();
}

/** Polls `cond` every 10 ms until it holds; fails after `ms`. */
async function until(what, cond, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`waited ${ms} ms for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Resolves with the first event of `type` on `emitter` for which `pred` holds. */
function next(emitter, type, pred = () => true, ms = 10_000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no ${type} event within ${ms} ms`));
    }, ms);
    const off = emitter.on(type, (e) => {
      if (pred(e)) {
        clearTimeout(timer);
        off();
        resolve(e);
      }
    });
  });
}

test('live: subscribe, lose the connection, resume with since and miss nothing', { skip }, async () => {
  const channel = `chat:live-${process.pid}`;
  const client = new RingcastClient({ urls: [wsUrl], backoff: { baseMs: 50, maxMs: 200 } });
  try {
    const sub = client.subscribe(channel);
    const got = [];
    const subscribed = [];
    sub.on('message', (m) => got.push(m));
    sub.on('subscribed', (s) => subscribed.push(s));
    await until('the subscription', () => subscribed.length === 1);
    const first = subscribed[0];
    assert.equal(first.resumed, false);
    assert.ok(client.node, 'the connected reply names the node');
    for (let i = 1; i <= 3; i++) await httpPublish(channel, { n: i });
    await until('message 3', () => got.some((m) => m.offset === 3));

    // Drop the socket under the client, and publish before it can resume (the
    // publishes race the reconnect; either way nothing may be missed).
    const down = next(client, 'state', (s) => s.state === 'disconnected');
    client._ws.close();
    await down;
    for (let i = 4; i <= 6; i++) await httpPublish(channel, { n: i });
    await until('the resume', () => subscribed.length === 2);
    assert.equal(subscribed[1].resumed, true);
    assert.equal(subscribed[1].recovered, true);
    await until('message 6', () => got.some((m) => m.offset === 6));
    assert.deepEqual(
      got.map((m) => [m.offset, m.data.n]),
      [1, 2, 3, 4, 5, 6].map((n) => [n, n]),
      'every message once, in order',
    );
    assert.ok(got.every((m) => m.epoch === first.epoch));
  } finally {
    client.close();
  }
});

test('live: publish with an idempotency key is acked once, a retry is a duplicate', { skip }, async () => {
  const channel = `chat:pub-${process.pid}`;
  const client = new RingcastClient({ urls: [wsUrl] });
  try {
    const a = await client.publish(channel, { text: 'hello' }, { idempotencyKey: 'live-key-1' });
    assert.equal(a.type, 'ack');
    assert.equal(a.duplicate, false);
    const b = await client.publish(channel, { text: 'hello' }, { idempotencyKey: 'live-key-1' });
    assert.deepEqual([b.offset, b.duplicate], [a.offset, true]);
    await assert.rejects(
      client.publish(channel, { text: 'other' }, { idempotencyKey: 'live-key-1' }),
      (e) => e.code === 'conflict',
    );
    const stats = await client.presenceStats('board:anything');
    assert.equal(stats.type, 'presence_stats');
  } finally {
    client.close();
  }
});

test('live: a keep-latest channel sends a snapshot after a fresh subscribe', { skip }, async () => {
  const channel = `board:snap-${process.pid}`;
  for (const [key, home] of [
    ['g1', 1],
    ['g2', 5],
    ['g1', 2],
  ]) {
    const r = await fetch(`${node}/v1/publish`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${apiKey}` },
      body: JSON.stringify({ channel, key, data: { home } }),
    });
    assert.equal(r.status, 200);
  }
  const client = new RingcastClient({ urls: [wsUrl] });
  try {
    const sub = client.subscribe(channel, { snapshot: true });
    const snap = await next(sub, 'snapshot');
    assert.deepEqual(
      snap.entries.map((e) => [e.key, e.data.home]),
      [
        ['g2', 5],
        ['g1', 2],
      ],
    );
    assert.deepEqual(sub.position, { epoch: snap.epoch, offset: 3 });
  } finally {
    client.close();
  }
});
