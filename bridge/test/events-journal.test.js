// The event queue on disk: events accepted while the API is down survive a
// close, a crash (SIGKILL) and a damaged journal, keep their order and
// event_id, and the bound drops superseded statuses first.
import assert from 'node:assert/strict';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { DurableEventQueue, FILE_NAME } from '../src/event-queue.js';
import { EventPublisher } from '../src/events.js';
import { TOKEN, freePort, request, spawnBridge, startEventsReceiver, tempDir, waitFor } from '../test-support/helpers.js';

// Port 9 on loopback refuses connections: an API that is down.
const DOWN = 'http://127.0.0.1:9/';
const SLOW = { initialMs: 60_000 }; // nothing is retried during a test

const journal = (dir) => path.join(dir, FILE_NAME);

/** The events the journal still holds (adds minus dones, in order), as the next start would replay them. */
function queuedInJournal(dir) {
  let text = '';
  try {
    text = readFileSync(journal(dir), 'utf8');
  } catch {
    return [];
  }
  const queued = new Map();
  for (const line of text.split('\n')) {
    let record;
    try {
      record = JSON.parse(line);
    } catch {
      continue; // empty, or being written right now
    }
    if (record.event) queued.set(record.event.event_id, record.event);
    for (const id of record.done ?? []) queued.delete(id);
  }
  return [...queued.values()];
}

const withoutId = ({ event_id, ...rest }) => rest;

test('events published while the API is down survive a close and are delivered by the next publisher, in order, with their event_id', async (t) => {
  const dir = tempDir(t);
  const published = [
    { type: 'whatsapp_status', status: 'connected', qr_code: null, phone: '+15550000001', since: '2025-01-27T14:30:00.000Z', last_error: null },
    { type: 'message_ack', whatsapp_message_id: 'true_1@c.us_A', idempotency_key: 'k-1', ack: 'sent', at: '2025-01-27T14:30:01.000Z' },
    { type: 'inbound_message', phone: '+56911112222', text: 'BAJA', whatsapp_message_id: 'false_56911112222@c.us_B', at: '2025-01-27T14:31:00.000Z' },
  ];

  const down = new EventPublisher({ url: DOWN, token: TOKEN, dir, backoff: SLOW });
  t.after(() => down.close()); // also when an assertion fails first (closing twice is harmless)
  const durable = published.map((e) => down.publish(e));
  assert.equal(durable[0], durable[2], 'events published together share one write and fdatasync');
  assert.deepEqual(await Promise.all(durable), [true, true, true]);
  const onDisk = queuedInJournal(dir); // acknowledged means already in the file
  assert.deepEqual(onDisk.map(withoutId), published);
  for (const e of onDisk) assert.match(e.event_id, /^[0-9a-f-]{36}$/);
  await down.close();
  assert.equal(down.pending, 3);

  const lines = [];
  const receiver = await startEventsReceiver(t);
  const up = new EventPublisher({ url: receiver.url, token: TOKEN, dir, log: (l) => lines.push(l) });
  t.after(() => up.close());
  up.start();
  await waitFor(() => receiver.received.length === 3, { what: 'the three queued events' });
  assert.deepEqual(receiver.received.map((r) => r.event), onDisk, 'same events, same order, same event_id');
  assert.ok(receiver.received.every((r) => r.signatureValid));
  assert.ok(lines.some((l) => l.includes('3 event(s) queued before the last stop')));

  // Delivered events are marked done: a third start has nothing to send.
  await waitFor(() => up.pending === 0, { what: 'queue to empty' });
  await up.close();
  const third = new EventPublisher({ url: DOWN, token: TOKEN, dir, backoff: SLOW });
  t.after(() => third.close());
  third.start();
  assert.equal(third.pending, 0);
  await third.close();
});

test('a bridge SIGKILLed while the API is down delivers its queued events, the reply included, after a restart', { timeout: 60_000 }, async (t) => {
  const dataDir = tempDir(t);
  const apiPort = await freePort(); // nothing listens there yet: the API is down
  let bridgePort = await freePort();
  while (bridgePort === apiPort) bridgePort = await freePort(); // (port 0 could be handed the API's port)
  const auth = { authorization: `Bearer ${TOKEN}` };
  const env = {
    BRIDGE_TOKEN: TOKEN,
    BRIDGE_PORT: String(bridgePort),
    BRIDGE_DATA_DIR: dataDir,
    BRIDGE_EVENTS_URL: `http://127.0.0.1:${apiPort}/api/bridge/events`,
  };
  const text = 'BAJA por favor 5e1f';

  const first = await spawnBridge(t, env);
  await waitFor(async () => (await request(first.url, 'GET', '/health', undefined, auth)).body.status === 'connected', { what: 'simulator to connect' });
  const reply = await request(first.url, 'POST', '/simulator/inbound', { from: '+56933334444', text }, auth);
  assert.equal(reply.status, 200);
  const journaled = await waitFor(() => queuedInJournal(dataDir).find((e) => e.type === 'inbound_message'), { what: 'the reply in the journal' });
  assert.equal(journaled.whatsapp_message_id, reply.body.whatsapp_message_id);
  const queued = queuedInJournal(dataDir); // initializing, connected, the reply
  assert.ok(queued.length >= 2);
  first.child.kill('SIGKILL'); // no shutdown flush: only what is on disk survives
  await first.exited;

  const receiver = await startEventsReceiver(t, { port: apiPort }); // the API is back
  const second = await spawnBridge(t, env);
  await waitFor(() => receiver.received.some((r) => r.event.event_id === journaled.event_id), { timeoutMs: 15_000, what: `the reply to be delivered:\n${second.output()}` });
  const ids = receiver.received.map((r) => r.event.event_id);
  assert.deepEqual(ids.slice(0, queued.length), queued.map((e) => e.event_id), 'replayed first, in order, with their event_id');
  const delivered = receiver.received.find((r) => r.event.event_id === journaled.event_id);
  assert.deepEqual(delivered.event, { event_id: journaled.event_id, type: 'inbound_message', phone: '+56933334444', text, whatsapp_message_id: reply.body.whatsapp_message_id, at: reply.body.at });
  assert.equal(delivered.signatureValid, true);
  assert.match(second.output(), /event\(s\) queued before the last stop; delivering them first/);

  second.child.kill('SIGTERM');
  assert.deepEqual(await second.exited, { code: 0, signal: null });
  for (const output of [first.output(), second.output()]) {
    assert.ok(!output.includes('5e1f'), 'the text is never logged');
    assert.ok(!output.includes('33334444'), 'the phone is never logged');
  }
});

test('a journal whose last line was cut short by a crash loads without it, with one log line', async (t) => {
  const dir = tempDir(t);
  const a = { event_id: '11111111-1111-4111-8111-111111111111', type: 'message_ack', whatsapp_message_id: 'true_1@c.us_A', idempotency_key: 'k', ack: 'read', at: '2025-01-27T14:30:00.000Z' };
  const b = { event_id: '22222222-2222-4222-8222-222222222222', type: 'inbound_message', phone: '+56911112222', text: 'BAJA', whatsapp_message_id: 'false_1@c.us_B', at: '2025-01-27T14:31:00.000Z' };
  const cut = JSON.stringify({ event: { event_id: '33333333-3333-4333-8333-333333333333', type: 'inbound_message', phone: '+56955556666', text: 'secreto' } }).slice(0, 70);
  writeFileSync(journal(dir), `${JSON.stringify({ event: a })}\n${JSON.stringify({ event: b })}\n${cut}`);

  const lines = [];
  const receiver = await startEventsReceiver(t);
  const events = new EventPublisher({ url: receiver.url, token: TOKEN, dir, log: (l) => lines.push(l) });
  t.after(() => events.close());
  events.start();
  // The file is rewritten clean before anything is appended, so a new event is not glued to the broken line.
  assert.ok(readFileSync(journal(dir), 'utf8').endsWith('\n'));
  events.publish({ type: 'message_ack', n: 3 });
  await waitFor(() => receiver.received.length === 3, { what: 'three events' });
  assert.deepEqual(receiver.received.map((r) => r.event), [a, b, { event_id: receiver.received[2].event.event_id, type: 'message_ack', n: 3 }]);

  const skipped = lines.filter((l) => l.includes('unreadable'));
  assert.equal(skipped.length, 1);
  assert.match(skipped[0], /skipped 1 unreadable line\(s\)/);
  for (const l of lines) assert.ok(!l.includes('secreto') && !l.includes('55556666'), `journal contents leaked: ${l}`);
  for (const line of readFileSync(journal(dir), 'utf8').split('\n').filter(Boolean)) JSON.parse(line);
});

test('registrations are superseded like statuses: only the newest bridge_registered is kept when the queue is full', async (t) => {
  const dir = tempDir(t);
  const events = new EventPublisher({ url: DOWN, token: TOKEN, dir, maxEvents: 6, numberId: '6a1f2c3d-4b5e-4f60-8a7b-9c0d1e2f3a4b', backoff: SLOW });
  t.after(() => events.close());
  const reg = (n) => ({ type: 'bridge_registered', n, url: 'http://127.0.0.1:3001' });
  const status = (n) => ({ type: 'whatsapp_status', n, status: 'connected' });
  const reply = (n) => ({ type: 'inbound_message', n, phone: '+56977778888', text: 'hola' });
  await Promise.all([reg(1), status(1), reg(2), status(2), reply(1), reg(3), reply(2)].map((e) => events.publish(e)));
  // 7 > 6: cut to 5, the oldest superseded first (b1, then w1); b3 and w2 are the newest of their type.
  const queued = queuedInJournal(dir);
  assert.deepEqual(queued.map((e) => e.type[0] + e.n), ['b2', 'w2', 'i1', 'b3', 'i2']);
  await Promise.all([reply(3), reply(4)].map((e) => events.publish(e)));
  assert.deepEqual(queuedInJournal(dir).map((e) => e.type[0] + e.n), ['i1', 'b3', 'i2', 'i3', 'i4'], 'b2 superseded; then the oldest of the rest');
  assert.ok(queued.every((e) => e.number_id === '6a1f2c3d-4b5e-4f60-8a7b-9c0d1e2f3a4b'), 'number_id is journaled with each event');
});

test('past its bound the queue drops superseded whatsapp_status events first, then acks, then the oldest, one log line per drop', async (t) => {
  const dir = tempDir(t);
  const lines = [];
  // 10 events; past it the queue is cut to 9 (99 %, rounded down).
  const events = new EventPublisher({ url: DOWN, token: TOKEN, dir, maxEvents: 10, log: (l) => lines.push(l), backoff: SLOW });
  t.after(() => events.close());
  const status = (n) => ({ type: 'whatsapp_status', n, status: 'connected' });
  const ack = (n) => ({ type: 'message_ack', n, ack: 'read' });
  const reply = (n) => ({ type: 'inbound_message', n, phone: '+56977778888', text: 'BAJA secreto' });
  const publish = (...list) => Promise.all(list.map((e) => events.publish(e)));
  const queuedNames = () => queuedInJournal(dir).map((e) => e.type[0] + e.n);

  await publish(status(1), reply(1), ack(1), status(2), reply(2), status(3), ack(2), status(4), reply(3), status(5));
  assert.equal(events.pending, 10);
  assert.equal(lines.filter((l) => l.includes('queue full')).length, 0);

  await publish(reply(4)); // 11: the two oldest superseded statuses go
  assert.deepEqual(queuedNames(), ['i1', 'm1', 'i2', 'w3', 'm2', 'w4', 'i3', 'w5', 'i4']);
  await publish(reply(5), reply(6)); // the last two superseded statuses
  assert.deepEqual(queuedNames(), ['i1', 'm1', 'i2', 'm2', 'i3', 'w5', 'i4', 'i5', 'i6']);
  await publish(reply(7), reply(8)); // no superseded status left (w5 is the newest): acks go
  assert.deepEqual(queuedNames(), ['i1', 'i2', 'i3', 'w5', 'i4', 'i5', 'i6', 'i7', 'i8']);
  await publish(reply(9), reply(10)); // then the oldest of the rest
  assert.deepEqual(queuedNames(), ['i3', 'w5', 'i4', 'i5', 'i6', 'i7', 'i8', 'i9', 'i10']);

  const full = lines.filter((l) => l.includes('queue full'));
  assert.equal(full.length, 4, 'one line per drop');
  assert.match(full[0], /dropped 2 event\(s\), superseded statuses first: 2 whatsapp_status$/);
  assert.match(full[1], /: 2 whatsapp_status$/);
  assert.match(full[2], /: 2 message_ack$/);
  assert.match(full[3], /: 2 inbound_message$/);
  for (const l of lines) assert.ok(!l.includes('secreto') && !l.includes('77778888'), `event contents leaked: ${l}`);
  await events.close();

  // What was dropped stays dropped after a restart; the rest is delivered in order.
  const receiver = await startEventsReceiver(t);
  const next = new EventPublisher({ url: receiver.url, token: TOKEN, dir });
  t.after(() => next.close());
  next.start();
  await waitFor(() => receiver.received.length === 9, { what: 'the nine kept events' });
  assert.deepEqual(receiver.received.map((r) => r.event.type[0] + r.event.n), ['i3', 'w5', 'i4', 'i5', 'i6', 'i7', 'i8', 'i9', 'i10']);
});

test('the bound also counts bytes', async (t) => {
  const dir = tempDir(t);
  const lines = [];
  const events = new EventPublisher({ url: DOWN, token: TOKEN, dir, maxBytes: 4000, log: (l) => lines.push(l), backoff: SLOW });
  t.after(() => events.close());
  await events.publish({ type: 'inbound_message', n: 0, text: 'y'.repeat(300) });
  await events.publish({ type: 'whatsapp_status', n: 1, status: 'qr_needed', qr_code: 'x'.repeat(1500) });
  await events.publish({ type: 'whatsapp_status', n: 2, status: 'connected', qr_code: null });
  for (let n = 3; n <= 9; n++) await events.publish({ type: 'inbound_message', n, text: 'y'.repeat(300) });
  const kept = queuedInJournal(dir);
  assert.deepEqual(kept.map((e) => e.n), [0, 2, 3, 4, 5, 6, 7, 8, 9], 'the big superseded QR status went, nothing else');
  assert.ok(kept.reduce((sum, e) => sum + JSON.stringify({ event: e }).length + 1, 0) <= 4000);
  assert.equal(lines.filter((l) => l.includes('queue full')).length, 1);
});

test('the journal is compacted: delivered events do not pile up on disk', async (t) => {
  const dir = tempDir(t);
  const queue = new DurableEventQueue(dir, { compactMinBytes: 4096 });
  t.after(() => queue.close());
  queue.open();
  for (let n = 0; n < 500; n++) {
    queue.push({ event_id: `id-${n}`, type: 'message_ack', n, padding: 'z'.repeat(100) });
    if (n % 10 === 9) await queue.flush();
    queue.done(queue.first());
  }
  queue.push({ event_id: 'last', type: 'message_ack', n: 500 });
  await queue.flush();
  assert.ok(statSync(journal(dir)).size < 3 * 4096, `journal is ${statSync(journal(dir)).size} bytes`);
  await queue.close();
  const again = new DurableEventQueue(dir);
  t.after(() => again.close());
  assert.equal(again.open(), 1);
  assert.equal(again.first().event_id, 'last');
  await again.close();
});
