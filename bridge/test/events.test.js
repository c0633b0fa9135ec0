// Signed events to the backend: status changes and acks, retries, bounded queue.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import http from 'node:http';
import { test } from 'node:test';
import { EventPublisher, signEvent } from '../src/events.js';
import { TOKEN, startBridge, startEventsReceiver, tempDir, waitFor } from '../test-support/helpers.js';

test('signEvent is hex HMAC-SHA256 of "<timestamp>.<raw body>" keyed with the token', () => {
  // Reference value from: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
  const expected = 'sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686';
  assert.equal(signEvent('secret', 1700000000, '{"a":1}'), expected);
  assert.equal(signEvent('secret', '1700000000', '{"a":1}'), expected);
});

test('status changes and sent/delivered/read acks reach the backend signed', async (t) => {
  const receiver = await startEventsReceiver(t);
  const b = await startBridge(t, { BRIDGE_EVENTS_URL: receiver.url, SIMULATOR_ACK_DELAY_MS: '20' });
  await waitFor(() => receiver.received.some((r) => r.event.type === 'whatsapp_status' && r.event.status === 'connected'), { what: 'connected event' });

  const sent = await b.call('POST', '/send', { to: '+56912345678', body: 'hola', idempotency_key: 'evt-1' });
  assert.equal(sent.status, 200);
  const id = sent.body.whatsapp_message_id;
  const acks = await waitFor(() => {
    const mine = receiver.received.filter((r) => r.event.type === 'message_ack' && r.event.whatsapp_message_id === id);
    return mine.length === 3 && mine;
  }, { what: 'three acks' });
  assert.deepEqual(acks.map((r) => r.event.ack), ['sent', 'delivered', 'read']);
  for (const { event } of acks) {
    assert.equal(event.idempotency_key, 'evt-1');
    assert.match(event.at, /Z$/);
    assert.match(event.event_id, /^[0-9a-f-]{36}$/);
  }

  await b.call('POST', '/simulator/state', { status: 'qr_needed' });
  const qr = await waitFor(() => receiver.received.find((r) => r.event.status === 'qr_needed'), { what: 'qr_needed event' });
  assert.match(qr.event.qr_code, /^data:image\/png;base64,/);
  assert.equal('number_id' in qr.event, false, 'no number_id without BRIDGE_NUMBER_ID');
  assert.deepEqual(Object.keys(qr.event).sort(), ['event_id', 'last_disconnect_reason', 'last_error', 'phone', 'qr_code', 'raw_state', 'since', 'status', 'type']);

  for (const r of receiver.received) {
    assert.equal(r.signatureValid, true, `signature of ${r.event.type}`);
    assert.equal(r.contentType, 'application/json');
    assert.ok(Math.abs(r.timestamp - Date.now() / 1000) < 60, 'timestamp is current unix seconds');
  }
});

test('a signature made with another token does not verify', async (t) => {
  const receiver = await startEventsReceiver(t, { token: 'the-backend-expects-this' });
  await startBridge(t, { BRIDGE_EVENTS_URL: receiver.url });
  await waitFor(() => receiver.received.length > 0, { what: 'an event' });
  assert.equal(receiver.received[0].signatureValid, false);
});

test('events are retried until the backend accepts them, in order', async (t) => {
  const receiver = await startEventsReceiver(t, { failFirst: 3 });
  const events = new EventPublisher({ url: receiver.url, token: TOKEN, dir: tempDir(t), backoff: { initialMs: 5, maxMs: 20 } });
  t.after(() => events.close());
  events.publish({ type: 'whatsapp_status', status: 'connected', n: 1 });
  events.publish({ type: 'whatsapp_status', status: 'disconnected', n: 2 });
  await waitFor(() => receiver.received.length === 2, { what: 'both events' });
  assert.equal(receiver.requests(), 5);
  assert.deepEqual(receiver.received.map((r) => r.event.n), [1, 2]);
  assert.ok(receiver.received.every((r) => r.signatureValid));
});

test('the queue is bounded: past it the oldest events are dropped with one log line', async (t) => {
  const lines = [];
  // Port 9 on loopback refuses connections, so nothing drains while we publish.
  const events = new EventPublisher({ url: 'http://127.0.0.1:9/', token: TOKEN, dir: tempDir(t), maxEvents: 3, log: (l) => lines.push(l), backoff: { initialMs: 60_000 } });
  t.after(() => events.close());
  for (let n = 1; n <= 5; n++) events.publish({ type: 'message_ack', n });
  // 4 > 3: cut to 99 % of the bound (here 2), so 5 events leave 3 with one drop of 2.
  assert.equal(events.pending, 3);
  const full = lines.filter((l) => l.includes('event queue full'));
  assert.equal(full.length, 1);
  assert.match(full[0], /dropped 2 event\(s\).*: 2 message_ack$/);
});

test('publishing never waits for the backend', async (t) => {
  const events = new EventPublisher({ url: 'http://127.0.0.1:9/', token: TOKEN, dir: tempDir(t) });
  t.after(() => events.close());
  const started = performance.now();
  for (let n = 0; n < 1000; n++) events.publish({ type: 'message_ack', n });
  assert.ok(performance.now() - started < 200);
});

test('an empty events URL publishes nothing and keeps no journal', async (t) => {
  const dir = tempDir(t);
  const events = new EventPublisher({ url: '', token: TOKEN, dir });
  assert.equal(await events.publish({ type: 'message_ack' }), false);
  assert.equal(events.enabled, false);
  assert.equal(events.pending, 0);
  await events.close();
  assert.deepEqual(readdirSync(dir), []);
});

test('log lines about an inbound_message event name its type and id, never its text or phone', async (t) => {
  const lines = [];
  const log = (l) => lines.push(l);
  const reply = { type: 'inbound_message', phone: '+56911112222', text: 'BAJA secreto-51c0', whatsapp_message_id: 'false_56911112222@c.us_1', at: '2025-01-27T14:30:00.000Z' };

  // Retried (connection refused), dropped from a full queue, and left undelivered at shutdown.
  const down = new EventPublisher({ url: 'http://127.0.0.1:9/', token: TOKEN, dir: tempDir(t), maxEvents: 1, log, backoff: { initialMs: 60_000 } });
  down.publish(reply);
  down.publish(reply);
  await waitFor(() => lines.some((l) => l.includes('could not deliver')), { what: 'retry line' });
  await down.close();

  // Rejected for good by the API.
  const server = http.createServer((req, res) => req.resume().on('end', () => res.writeHead(422).end('{"code":"validation_error"}')));
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise((r) => server.close(r)));
  const refused = new EventPublisher({ url: `http://127.0.0.1:${server.address().port}/`, token: TOKEN, dir: tempDir(t), log });
  refused.publish(reply);
  await waitFor(() => lines.some((l) => l.includes('rejected')), { what: 'rejection line' });
  await refused.close();

  assert.ok(lines.some((l) => /could not deliver inbound_message event/.test(l)));
  assert.ok(lines.some((l) => /event queue full .*dropped 1 event\(s\).*: 1 inbound_message$/.test(l)));
  assert.ok(lines.some((l) => /backend rejected inbound_message event \(HTTP 422\)/.test(l)));
  assert.ok(lines.some((l) => /1 event\(s\) not delivered at shutdown/.test(l)));
  for (const line of lines) {
    assert.ok(!line.includes('secreto-51c0'), `text leaked: ${line}`);
    assert.ok(!line.includes('56911112222'), `phone leaked: ${line}`);
  }
});
