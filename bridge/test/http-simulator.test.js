// The HTTP contract, exercised through the real server with the simulator driver.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startBridge, startEventsReceiver, waitFor } from '../test-support/helpers.js';

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/;
const MESSAGE_ID = /^true_\d+@c\.us_[0-9A-F]+$/;

async function connectedBridge(t, env) {
  const b = await startBridge(t, env);
  await waitFor(async () => (await b.call('GET', '/status')).body.status === 'connected', { what: 'simulator to connect' });
  return b;
}

const send = (b, to, key, body = 'hola') => b.call('POST', '/send', { to, body, idempotency_key: key });

test('/health answers without a token', async (t) => {
  const b = await startBridge(t);
  const res = await b.call('GET', '/health', undefined, { authorization: '' });
  assert.equal(res.status, 200);
  assert.equal(res.body.ok, true);
  assert.equal(res.body.driver, 'simulator');
  assert.ok(['initializing', 'connected'].includes(res.body.status));
});

test('every other route refuses a missing or wrong token with 401 unauthorized', async (t) => {
  const b = await startBridge(t);
  const routes = [
    ['GET', '/status'],
    ['POST', '/send'],
    ['POST', '/logout'],
    ['POST', '/restart'],
    ['POST', '/session/start'],
    ['POST', '/session/stop'],
    ['POST', '/session/restart'],
    ['POST', '/session/logout'],
    ['GET', '/simulator/outbox'],
    ['DELETE', '/simulator/outbox'],
    ['POST', '/simulator/state'],
    ['POST', '/simulator/config'],
    ['POST', '/simulator/inbound'],
    ['GET', '/no-such-route'],
  ];
  for (const [method, route] of routes) {
    for (const authorization of ['', 'Bearer wrong-token', 'Basic dGVzdA==']) {
      const res = await b.call(method, route, method === 'GET' || method === 'DELETE' ? undefined : {}, { authorization });
      assert.equal(res.status, 401, `${method} ${route} with "${authorization}"`);
      assert.equal(res.body.code, 'unauthorized');
      assert.equal(typeof res.body.message, 'string');
    }
  }
  assert.equal((await b.call('GET', '/simulator/outbox')).body.messages.length, 0, 'nothing was sent by refused calls');
  assert.notEqual((await b.call('GET', '/status')).body.status, 'stopped', 'a refused /session/stop stopped nothing');
});

test('GET /status accepts the bridge_token cookie, and only GET /status does', async (t) => {
  const b = await startBridge(t);
  const cookie = `bridge_token=${encodeURIComponent('test-token-0123456789')}`;
  assert.equal((await b.call('GET', '/status', undefined, { authorization: '', cookie })).status, 200);
  assert.equal((await b.call('GET', '/status', undefined, { authorization: '', cookie: 'bridge_token=nope' })).status, 401);
  assert.equal((await b.call('GET', '/simulator/outbox', undefined, { authorization: '', cookie })).status, 401);
  const sendWithCookie = await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: 'c' }, { authorization: '', cookie });
  assert.equal(sendWithCookie.status, 401);
});

test('/status reports initializing then connected with the simulator phone', async (t) => {
  const b = await startBridge(t);
  const first = await b.call('GET', '/status');
  assert.equal(first.status, 200);
  assert.deepEqual(Object.keys(first.body).sort(), ['last_disconnect_reason', 'last_error', 'number_id', 'phone', 'qr_code', 'raw_state', 'rss_bytes', 'since', 'status']);
  const connected = await waitFor(async () => {
    const { body } = await b.call('GET', '/status');
    return body.status === 'connected' && body;
  });
  assert.equal(connected.phone, '+15550000001');
  assert.equal(connected.qr_code, null);
  assert.equal(connected.last_error, null);
  assert.match(connected.since, ISO_UTC);
  assert.equal(connected.raw_state, 'CONNECTED');
  assert.equal(connected.number_id, null, 'no BRIDGE_NUMBER_ID: the default number');
});

test('a send lands in the outbox with a wwebjs-style message id', async (t) => {
  const b = await connectedBridge(t);
  const res = await send(b, '+56912345678', 'msg-1:recipient-1', 'Hola Ana');
  assert.equal(res.status, 200);
  assert.equal(res.body.replayed, false);
  assert.match(res.body.whatsapp_message_id, MESSAGE_ID);
  assert.ok(res.body.whatsapp_message_id.startsWith('true_56912345678@c.us_'));
  const { messages } = (await b.call('GET', '/simulator/outbox')).body;
  assert.equal(messages.length, 1);
  assert.deepEqual({ ...messages[0], sent_at: undefined }, {
    to: '+56912345678',
    body: 'Hola Ana',
    media: null,
    idempotency_key: 'msg-1:recipient-1',
    whatsapp_message_id: res.body.whatsapp_message_id,
    sent_at: undefined,
  });
  assert.match(messages[0].sent_at, ISO_UTC);

  assert.equal((await b.call('DELETE', '/simulator/outbox')).status, 200);
  assert.equal((await b.call('GET', '/simulator/outbox')).body.messages.length, 0);
});

test('a repeated idempotency key replays the first result and sends nothing', async (t) => {
  const b = await connectedBridge(t);
  const first = await send(b, '+56912345678', 'k-1', 'first body');
  const again = await send(b, '+56912345678', 'k-1', 'first body');
  assert.equal(again.status, 200);
  assert.deepEqual(again.body, { whatsapp_message_id: first.body.whatsapp_message_id, replayed: true });
  assert.equal((await b.call('GET', '/simulator/outbox')).body.messages.length, 1);
});

test('concurrent identical sends share one send', async (t) => {
  const b = await connectedBridge(t, { SIMULATOR_LATENCY_MS: '100' });
  const results = await Promise.all(Array.from({ length: 5 }, () => send(b, '+56912345678', 'same-key')));
  assert.deepEqual(results.map((r) => r.status), [200, 200, 200, 200, 200]);
  assert.equal(new Set(results.map((r) => r.body.whatsapp_message_id)).size, 1);
  assert.equal(results.filter((r) => r.body.replayed === false).length, 1);
  assert.equal((await b.call('GET', '/simulator/outbox')).body.messages.length, 1);
});

test('a number ending in 0000 is not on WhatsApp: 422 not_registered, nothing sent', async (t) => {
  const b = await connectedBridge(t);
  const res = await send(b, '+56912340000', 'k-nr');
  assert.equal(res.status, 422);
  assert.equal(res.body.code, 'not_registered');
  assert.equal(res.body.field, 'to');
  assert.equal((await b.call('GET', '/simulator/outbox')).body.messages.length, 0);
});

test('a number that is not E.164 is 422 invalid_number', async (t) => {
  const b = await connectedBridge(t);
  for (const to of ['56912345678', '+0912345678', '+1', '+1234567890123456', '+56 9 1234 5678', 56912345678, null]) {
    const res = await b.call('POST', '/send', { to, body: 'x', idempotency_key: `k-${to}` });
    assert.equal(res.status, 422, `to=${to}`);
    assert.equal(res.body.code, 'invalid_number');
    assert.equal(res.body.field, 'to');
  }
});

test('bad body or idempotency key is 400 bad_request naming the field', async (t) => {
  const b = await connectedBridge(t);
  const cases = [
    [{ to: '+56912345678', body: '', idempotency_key: 'k' }, 'body'],
    [{ to: '+56912345678', body: 'x'.repeat(4097), idempotency_key: 'k' }, 'body'],
    [{ to: '+56912345678', body: 42, idempotency_key: 'k' }, 'body'],
    [{ to: '+56912345678', body: 'x', idempotency_key: '' }, 'idempotency_key'],
    [{ to: '+56912345678', body: 'x', idempotency_key: 'k'.repeat(201) }, 'idempotency_key'],
    [{ to: '+56912345678', body: 'x' }, 'idempotency_key'],
  ];
  for (const [input, field] of cases) {
    const res = await b.call('POST', '/send', input);
    assert.equal(res.status, 400, JSON.stringify(input).slice(0, 80));
    assert.equal(res.body.code, 'bad_request');
    assert.equal(res.body.field, field);
  }
  // The limits themselves are accepted.
  const edge = await b.call('POST', '/send', { to: '+56912345678', body: 'x'.repeat(4096), idempotency_key: 'k'.repeat(200) });
  assert.equal(edge.status, 200);
});

test('malformed JSON is 400 bad_request', async (t) => {
  const b = await connectedBridge(t);
  for (const raw of ['{"to":', 'not json', '[1,2]', 'null', '']) {
    const res = await b.call('POST', '/send', raw, { 'content-type': 'application/json' });
    assert.equal(res.status, 400, raw);
    assert.equal(res.body.code, 'bad_request');
  }
});

test('a body over 64 KB is 413 payload_too_large, with or without Content-Length', async (t) => {
  const b = await connectedBridge(t);
  const big = JSON.stringify({ to: '+56912345678', body: 'x'.repeat(70 * 1024), idempotency_key: 'big' });
  const res = await b.call('POST', '/send', big);
  assert.equal(res.status, 413);
  assert.equal(res.body.code, 'payload_too_large');
  // A streamed body has no Content-Length, so the limit must hold while reading.
  const stream = new ReadableStream({
    start(controller) {
      controller.enqueue(new TextEncoder().encode(big));
      controller.close();
    },
  });
  const streamed = await fetch(`${b.url}/send`, { method: 'POST', body: stream, duplex: 'half', headers: { authorization: 'Bearer test-token-0123456789' } });
  assert.equal(streamed.status, 413);
  assert.equal((await streamed.json()).code, 'payload_too_large');
  assert.equal((await b.call('GET', '/simulator/outbox')).body.messages.length, 0);
});

test('sending while disconnected is 503 not_connected, and works again once connected', async (t) => {
  const b = await connectedBridge(t);
  const forced = await b.call('POST', '/simulator/state', { status: 'disconnected', reason: 'phone offline' });
  assert.equal(forced.status, 200);
  const status = (await b.call('GET', '/status')).body;
  assert.equal(status.status, 'disconnected');
  assert.equal(status.last_error, 'phone offline');
  const res = await send(b, '+56912345678', 'k-nc');
  assert.equal(res.status, 503);
  assert.equal(res.body.code, 'not_connected');
  assert.equal((await b.call('GET', '/simulator/outbox')).body.messages.length, 0);

  await b.call('POST', '/simulator/state', { status: 'connected' });
  const retried = await send(b, '+56912345678', 'k-nc');
  assert.equal(retried.status, 200, 'a failed send is not remembered, so the same key can be retried');
  assert.equal(retried.body.replayed, false);
});

test('fail_next makes the next n sends fail with 502 send_failed', async (t) => {
  const b = await connectedBridge(t);
  const cfg = await b.call('POST', '/simulator/config', { fail_next: 2 });
  assert.equal(cfg.status, 200);
  assert.equal(cfg.body.fail_next, 2);
  assert.equal((await send(b, '+56912345678', 'f-1')).body.code, 'send_failed');
  const second = await send(b, '+56912345678', 'f-2');
  assert.equal(second.status, 502);
  assert.equal(second.body.code, 'send_failed');
  assert.equal((await send(b, '+56912345678', 'f-3')).status, 200);
  assert.equal((await b.call('GET', '/simulator/outbox')).body.messages.length, 1);
  assert.equal((await b.call('POST', '/simulator/config', { fail_next: -1 })).status, 400);
});

test('forcing qr_needed yields a PNG data URL and no phone', async (t) => {
  const b = await connectedBridge(t);
  const res = await b.call('POST', '/simulator/state', { status: 'qr_needed' });
  assert.equal(res.status, 200);
  const status = (await b.call('GET', '/status')).body;
  assert.equal(status.status, 'qr_needed');
  assert.equal(status.phone, null);
  assert.match(status.qr_code, /^data:image\/png;base64,[A-Za-z0-9+/]+=*$/);
  const png = Buffer.from(status.qr_code.split(',')[1], 'base64');
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  assert.equal((await send(b, '+56912345678', 'k-qr')).body.code, 'not_connected');
  assert.equal((await b.call('POST', '/simulator/state', { status: 'initializing' })).status, 400);
});

test('logout asks for a QR; restart goes through initializing back to the paired state', async (t) => {
  const b = await connectedBridge(t);
  const out = await b.call('POST', '/logout');
  assert.equal(out.status, 200);
  assert.deepEqual(out.body, { status: 'qr_needed' });
  await b.call('POST', '/simulator/state', { status: 'connected' });
  const restarted = await b.call('POST', '/restart');
  assert.equal(restarted.status, 200);
  assert.equal(restarted.body.status, 'initializing');
  await waitFor(async () => (await b.call('GET', '/status')).body.status === 'connected', { what: 'reconnect after restart' });
});

test('unknown routes are 404 and wrong methods 405, once authenticated', async (t) => {
  const b = await startBridge(t);
  assert.equal((await b.call('GET', '/nope')).body.code, 'not_found');
  const wrong = await b.call('GET', '/send');
  assert.equal(wrong.status, 405);
  assert.equal(wrong.body.code, 'method_not_allowed');
});

test('GET / serves the self-contained operator page without a token', async (t) => {
  const b = await startBridge(t);
  const res = await b.call('GET', '/', undefined, { authorization: '' });
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type'), /^text\/html/);
  assert.match(res.body, /<img id="qr"/);
  assert.doesNotMatch(res.body, /(src|href)="https?:/, 'no external assets');
  assert.doesNotMatch(res.body, /test-token/, 'the page never contains the token');
});

const inboundEvents = (receiver) => receiver.received.filter((r) => r.event.type === 'inbound_message');

test('POST /simulator/inbound reaches the API as a signed inbound_message event', async (t) => {
  const receiver = await startEventsReceiver(t);
  const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: receiver.url });
  const before = Date.now();
  const res = await b.call('POST', '/simulator/inbound', { from: '+56911112222', text: 'BAJA' });
  assert.equal(res.status, 200);
  assert.deepEqual(Object.keys(res.body).sort(), ['at', 'phone', 'text', 'whatsapp_message_id']);
  assert.equal(res.body.phone, '+56911112222');
  assert.equal(res.body.text, 'BAJA');
  assert.match(res.body.whatsapp_message_id, /^false_56911112222@c\.us_[0-9A-F]{20}$/, 'shaped like an incoming whatsapp-web.js id');
  assert.match(res.body.at, ISO_UTC);
  assert.ok(Date.parse(res.body.at) >= before - 1000 && Date.parse(res.body.at) <= Date.now() + 1000, 'at defaults to now');

  const [got] = await waitFor(() => inboundEvents(receiver).length === 1 && inboundEvents(receiver), { what: 'inbound_message event' });
  assert.equal(got.signatureValid, true);
  assert.deepEqual(Object.keys(got.event).sort(), ['at', 'event_id', 'phone', 'text', 'type', 'whatsapp_message_id']);
  assert.match(got.event.event_id, /^[0-9a-f-]{36}$/);
  assert.deepEqual({ ...got.event, event_id: undefined }, { type: 'inbound_message', ...res.body, event_id: undefined });

  // A second reply gets its own id.
  const second = await b.call('POST', '/simulator/inbound', { from: '+56911112222', text: 'BAJA' });
  assert.notEqual(second.body.whatsapp_message_id, res.body.whatsapp_message_id);
  await waitFor(() => inboundEvents(receiver).length === 2, { what: 'second inbound_message event' });
});

test('POST /simulator/inbound keeps a given whatsapp_message_id and at (normalized to UTC)', async (t) => {
  const receiver = await startEventsReceiver(t);
  const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: receiver.url });
  const input = { from: '+15551234567', text: 'Stop, please', whatsapp_message_id: 'false_15551234567@c.us_ABC123', at: '2025-01-27T11:30:00-03:00' };
  const res = await b.call('POST', '/simulator/inbound', input);
  assert.equal(res.status, 200);
  const expected = { phone: '+15551234567', text: 'Stop, please', whatsapp_message_id: 'false_15551234567@c.us_ABC123', at: '2025-01-27T14:30:00.000Z' };
  assert.deepEqual(res.body, expected);
  const [got] = await waitFor(() => inboundEvents(receiver).length === 1 && inboundEvents(receiver), { what: 'inbound_message event' });
  assert.deepEqual({ ...got.event, event_id: undefined }, { type: 'inbound_message', ...expected, event_id: undefined });
  // The same id again is the same reply to the API; the bridge just forwards it (at-least-once).
  await b.call('POST', '/simulator/inbound', input);
  const both = await waitFor(() => inboundEvents(receiver).length === 2 && inboundEvents(receiver), { what: 'repeated event' });
  assert.equal(both[1].event.whatsapp_message_id, 'false_15551234567@c.us_ABC123');
  assert.notEqual(both[1].event.event_id, both[0].event.event_id);
});

test('POST /simulator/inbound refuses a bad from, text, id or at with 400 bad_request and sends nothing', async (t) => {
  const receiver = await startEventsReceiver(t);
  const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: receiver.url });
  const ok = { from: '+56911112222', text: 'BAJA' };
  const cases = [
    [{ text: 'BAJA' }, 'from'],
    [{ ...ok, from: '56911112222' }, 'from'],
    [{ ...ok, from: '+0911112222' }, 'from'],
    [{ ...ok, from: '+56 9 1111 2222' }, 'from'],
    [{ ...ok, from: 56911112222 }, 'from'],
    [{ ...ok, from: null }, 'from'],
    [{ from: '+56911112222' }, 'text'],
    [{ ...ok, text: '' }, 'text'],
    [{ ...ok, text: '   \n' }, 'text'],
    [{ ...ok, text: 42 }, 'text'],
    [{ ...ok, text: null }, 'text'],
    [{ ...ok, whatsapp_message_id: '' }, 'whatsapp_message_id'],
    [{ ...ok, whatsapp_message_id: 'x'.repeat(301) }, 'whatsapp_message_id'],
    [{ ...ok, whatsapp_message_id: 7 }, 'whatsapp_message_id'],
    [{ ...ok, at: 'yesterday' }, 'at'],
    [{ ...ok, at: '2025-13-45T10:00:00Z' }, 'at'],
    [{ ...ok, at: '2025-01-27' }, 'at'],
    [{ ...ok, at: 1737988200 }, 'at'],
  ];
  for (const [input, field] of cases) {
    const res = await b.call('POST', '/simulator/inbound', input);
    assert.equal(res.status, 400, JSON.stringify(input));
    assert.deepEqual(Object.keys(res.body).sort(), ['code', 'field', 'message']);
    assert.equal(res.body.code, 'bad_request');
    assert.equal(res.body.field, field, JSON.stringify(input));
  }
  for (const raw of ['{"from":', '[]', 'null']) {
    const res = await b.call('POST', '/simulator/inbound', raw);
    assert.equal(res.status, 400, raw);
    assert.equal(res.body.code, 'bad_request');
  }
  assert.equal((await b.call('GET', '/simulator/inbound')).status, 405);
  // Nothing above may have produced an event; a valid call afterwards is the first one.
  const valid = await b.call('POST', '/simulator/inbound', ok);
  const events = await waitFor(() => inboundEvents(receiver).length > 0 && inboundEvents(receiver), { what: 'the valid event' });
  await new Promise((r) => setTimeout(r, 50)); // would catch a stray one
  assert.equal(inboundEvents(receiver).length, 1);
  assert.equal(events[0].event.whatsapp_message_id, valid.body.whatsapp_message_id);
});

test('the text of a reply never appears in the log, even while its event is being retried', async (t) => {
  const receiver = await startEventsReceiver(t, { failFirst: 2 }); // the publisher logs its retry
  const b = await startBridge(t, { BRIDGE_EVENTS_URL: receiver.url }, { eventBackoff: { initialMs: 5, maxMs: 20 } });
  const text = 'BAJA secreto-7f3a9c';
  assert.equal((await b.call('POST', '/simulator/inbound', { from: '+56911112222', text })).status, 200);
  await waitFor(() => inboundEvents(receiver).length === 1, { what: 'inbound_message event after retries' });
  assert.ok(b.lines.some((l) => /could not deliver \w+ event/.test(l)), 'the retry was logged');
  for (const line of b.lines) assert.ok(!line.includes('secreto-7f3a9c'), `log line leaks the text: ${line}`);
});
