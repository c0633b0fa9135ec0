// One bridge process per WhatsApp number: BRIDGE_NUMBER_ID on every event, the bridge_registered
// event, the richer GET /status, the session commands, and the simulator told to misbehave
// (per process) the ways numbers fail in the wild. Through the real HTTP server.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { processRssBytes } from '../src/drivers/browser-procs.js';
import { startBridge, startEventsReceiver, waitFor } from '../test-support/helpers.js';

const NUMBER_ID = '6a1f2c3d-4b5e-4f60-8a7b-9c0d1e2f3a4b';
const MIB = 1024 * 1024;

const send = (b, to, key, body = 'hola') => b.call('POST', '/send', { to, body, idempotency_key: key });
const statusOf = async (b) => (await b.call('GET', '/status')).body;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function connectedBridge(t, env, opts) {
  const b = await startBridge(t, env, opts);
  await waitFor(async () => (await statusOf(b)).status === 'connected', { what: 'simulator to connect' });
  return b;
}

const ofType = (receiver, type) => receiver.received.filter((r) => r.event.type === type).map((r) => r.event);

test('with BRIDGE_NUMBER_ID every event carries number_id, signed like the rest', async (t) => {
  const receiver = await startEventsReceiver(t);
  const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: receiver.url, BRIDGE_NUMBER_ID: NUMBER_ID });
  const sent = await send(b, '+56912345678', 'n-1');
  assert.equal(sent.status, 200);
  await b.call('POST', '/simulator/inbound', { from: '+56911112222', text: 'hola' });
  await waitFor(() => ofType(receiver, 'message_ack').length === 3 && ofType(receiver, 'inbound_message').length === 1, { what: 'acks and the reply' });

  const types = new Set(receiver.received.map((r) => r.event.type));
  assert.deepEqual([...types].sort(), ['bridge_registered', 'inbound_message', 'message_ack', 'whatsapp_status']);
  for (const { event, signatureValid } of receiver.received) {
    assert.equal(event.number_id, NUMBER_ID, `${event.type} carries number_id`);
    assert.equal(signatureValid, true, `${event.type} is signed with number_id in it`);
  }
  assert.equal((await statusOf(b)).number_id, NUMBER_ID);
});

test('bridge_registered is posted at start with the default public URL, and again with each status', async (t) => {
  const receiver = await startEventsReceiver(t);
  const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: receiver.url, BRIDGE_NUMBER_ID: NUMBER_ID });
  const port = new URL(b.url).port;
  const first = await waitFor(() => ofType(receiver, 'bridge_registered')[0], { what: 'bridge_registered' });
  assert.deepEqual({ ...first, event_id: undefined }, { type: 'bridge_registered', url: `http://127.0.0.1:${port}`, number_id: NUMBER_ID, event_id: undefined });
  // The registration comes before any status, so the backend knows the bridge before it hears from it.
  assert.equal(receiver.received.findIndex((r) => r.event.type === 'bridge_registered'), 0);

  await waitFor(() => ofType(receiver, 'whatsapp_status').length >= 2, { what: 'initializing and connected statuses' });
  const before = ofType(receiver, 'bridge_registered').length;
  await b.call('POST', '/simulator/state', { status: 'disconnected', reason: 'phone offline' });
  await waitFor(() => ofType(receiver, 'bridge_registered').length === before + 1, { what: 'a registration with the new status' });
  const registrations = ofType(receiver, 'bridge_registered');
  assert.ok(registrations.length >= ofType(receiver, 'whatsapp_status').length + 1, 'one at start plus one per status');
});

test('BRIDGE_PUBLIC_URL is the URL registered; without BRIDGE_NUMBER_ID number_id is left out', async (t) => {
  const receiver = await startEventsReceiver(t);
  await startBridge(t, { BRIDGE_EVENTS_URL: receiver.url, BRIDGE_PUBLIC_URL: 'http://bridge-2.internal:3101/' });
  const first = await waitFor(() => ofType(receiver, 'bridge_registered')[0], { what: 'bridge_registered' });
  assert.deepEqual(Object.keys(first).sort(), ['event_id', 'type', 'url']);
  assert.equal(first.url, 'http://bridge-2.internal:3101');
});

test('GET /status reports the raw state, the last disconnect reason and the resident memory', async (t) => {
  const b = await startBridge(t, { BRIDGE_NUMBER_ID: NUMBER_ID });
  const early = await statusOf(b);
  if (early.status === 'initializing') assert.equal(early.raw_state, 'OPENING');
  const up = await waitFor(async () => {
    const s = await statusOf(b);
    return s.status === 'connected' && s;
  }, { what: 'connected' });
  assert.equal(up.raw_state, 'CONNECTED');
  assert.equal(up.last_disconnect_reason, null);
  assert.equal(up.number_id, NUMBER_ID);
  // The simulator has no browser: the bridge's own RSS, which this test process is.
  const own = processRssBytes(process.pid);
  assert.ok(Number.isInteger(up.rss_bytes) && up.rss_bytes > 10 * MIB, `rss_bytes ${up.rss_bytes}`);
  assert.ok(Math.abs(up.rss_bytes - own) < 64 * MIB, `rss_bytes ${up.rss_bytes} is about this process's ${own}`);

  await b.call('POST', '/simulator/state', { status: 'disconnected', reason: 'phone offline' });
  const down = await statusOf(b);
  assert.equal(down.last_disconnect_reason, 'phone offline');
});

test('session commands need the token, answer {status}, and stop holds until start', async (t) => {
  const b = await connectedBridge(t);
  for (const command of ['start', 'stop', 'restart', 'logout']) {
    const refused = await b.call('POST', `/session/${command}`, undefined, { authorization: 'Bearer wrong' });
    assert.equal(refused.status, 401, command);
    assert.equal((await b.call('GET', `/session/${command}`)).status, 405, command);
  }
  assert.equal((await statusOf(b)).status, 'connected');
  assert.deepEqual((await b.call('POST', '/session/start')).body, { status: 'connected' }, 'a running session is left alone');

  const stopped = await b.call('POST', '/session/stop');
  assert.equal(stopped.status, 200);
  assert.deepEqual(stopped.body, { status: 'stopped' });
  const res = await send(b, '+56912345678', 's-1');
  assert.equal(res.status, 503);
  assert.equal(res.body.code, 'not_connected');
  await sleep(100); // the simulator would have connected by now if anything were still running
  const still = await statusOf(b);
  assert.equal(still.status, 'stopped');
  assert.equal(still.last_disconnect_reason, 'stopped');

  assert.deepEqual((await b.call('POST', '/session/logout')).body, { status: 'stopped' }, 'a logout while stopped stays stopped');
  assert.equal((await statusOf(b)).phone, null);
  assert.deepEqual((await b.call('POST', '/session/start')).body, { status: 'initializing' });
  await waitFor(async () => (await statusOf(b)).status === 'qr_needed', { what: 'a QR, since we logged out' });
  await b.call('POST', '/simulator/state', { status: 'connected' });

  await b.call('POST', '/session/stop');
  assert.deepEqual((await b.call('POST', '/session/restart')).body, { status: 'initializing' }, 'restart starts a stopped session');
  await waitFor(async () => (await statusOf(b)).status === 'connected', { what: 'connected after restart' });
  assert.equal((await send(b, '+56912345678', 's-2')).status, 200);

  assert.deepEqual((await b.call('POST', '/session/logout')).body, { status: 'qr_needed' });
  const out = await statusOf(b);
  assert.equal(out.last_disconnect_reason, 'LOGOUT');
  assert.equal(out.raw_state, null);
});

test('pending_acks: sends are accepted but never acked, until turned off', async (t) => {
  const receiver = await startEventsReceiver(t);
  const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: receiver.url });
  assert.equal((await b.call('POST', '/simulator/config', { pending_acks: true })).body.pending_acks, true);
  const stuck = await send(b, '+56912345678', 'p-1');
  assert.equal(stuck.status, 200);
  assert.equal((await statusOf(b)).status, 'connected', 'it still looks connected');
  await sleep(150);
  assert.equal(ofType(receiver, 'message_ack').length, 0);

  await b.call('POST', '/simulator/config', { pending_acks: false });
  const fine = await send(b, '+56912345678', 'p-2');
  await waitFor(() => ofType(receiver, 'message_ack').length === 3, { what: 'acks of the second send' });
  assert.ok(ofType(receiver, 'message_ack').every((a) => a.whatsapp_message_id === fine.body.whatsapp_message_id));
  assert.equal((await b.call('POST', '/simulator/config', { pending_acks: 'yes' })).body.field, 'pending_acks');
});

test('restrict_new_chats: error 463 for recipients never written to, existing chats still work', async (t) => {
  const b = await connectedBridge(t);
  assert.equal((await send(b, '+56911110001', 'r-1')).status, 200); // a chat before the restriction
  await b.call('POST', '/simulator/inbound', { from: '+56911110002', text: 'hola' }); // they wrote first
  const cfg = await b.call('POST', '/simulator/config', { restrict_new_chats: true });
  assert.equal(cfg.body.restrict_new_chats, true);

  assert.equal((await send(b, '+56911110001', 'r-2')).status, 200, 'an existing chat');
  assert.equal((await send(b, '+56911110002', 'r-3')).status, 200, 'someone who wrote to us');
  const refused = await send(b, '+56911110003', 'r-4');
  assert.equal(refused.status, 403);
  assert.equal(refused.body.code, 'restricted_new_chats');
  assert.equal(refused.body.field, 'to');
  assert.match(refused.body.message, /463/);
  assert.equal((await send(b, '+56911110004', 'r-5')).body.code, 'restricted_new_chats', 'every new recipient');
  assert.deepEqual((await b.call('GET', '/simulator/outbox')).body.messages.map((m) => m.to), ['+56911110001', '+56911110001', '+56911110002']);

  // A refused send is not remembered: once lifted, the same key goes out.
  await b.call('POST', '/simulator/config', { restrict_new_chats: false });
  const retried = await send(b, '+56911110003', 'r-4');
  assert.equal(retried.status, 200);
  assert.equal(retried.body.replayed, false);
});

test('misbehaviour is per process: one restricted bridge, another sending to new chats', async (t) => {
  const one = await connectedBridge(t, { BRIDGE_NUMBER_ID: NUMBER_ID });
  const two = await connectedBridge(t, { BRIDGE_NUMBER_ID: '0b7e1d2c-3a4f-4e5d-8c6b-7a8f9e0d1c2b' });
  await one.call('POST', '/simulator/config', { restrict_new_chats: true, pending_acks: true });
  assert.equal((await send(one, '+56922220001', 'x-1')).body.code, 'restricted_new_chats');
  assert.equal((await send(two, '+56922220001', 'x-1')).status, 200);
  assert.equal((await two.call('POST', '/simulator/config', {})).body.restrict_new_chats, false);
});

for (const banned of ['TOS_BLOCK', 'SMB_TOS_BLOCK']) {
  test(`a forced ${banned} disconnects with that raw state and reason, and a restart comes back to it`, async (t) => {
    const receiver = await startEventsReceiver(t);
    const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: receiver.url, BRIDGE_NUMBER_ID: NUMBER_ID });
    const res = await b.call('POST', '/simulator/state', { raw_state: banned });
    assert.equal(res.status, 200);
    assert.equal(res.body.status, 'disconnected');
    assert.equal(res.body.raw_state, banned);
    assert.equal(res.body.last_disconnect_reason, banned);
    assert.equal((await send(b, '+56912345678', 'b-1')).body.code, 'not_connected');
    const event = await waitFor(() => ofType(receiver, 'whatsapp_status').find((e) => e.raw_state === banned), { what: `${banned} event` });
    assert.deepEqual(
      { status: event.status, raw_state: event.raw_state, last_disconnect_reason: event.last_disconnect_reason, number_id: event.number_id },
      { status: 'disconnected', raw_state: banned, last_disconnect_reason: banned, number_id: NUMBER_ID },
    );

    await b.call('POST', '/session/restart');
    await sleep(80);
    const after = await statusOf(b);
    assert.equal(after.status, 'disconnected', 'a ban survives a restart');
    assert.equal(after.raw_state, banned);

    await b.call('POST', '/simulator/state', { raw_state: 'CONNECTED' }); // a person sorted it out
    const back = await statusOf(b);
    assert.equal(back.status, 'connected');
    assert.equal(back.raw_state, 'CONNECTED');
    assert.equal(back.last_disconnect_reason, banned, 'the last reason stays readable');
  });
}

test('a forced UNPAIRED disconnects, and a restart asks for a QR', async (t) => {
  const b = await connectedBridge(t);
  const res = await b.call('POST', '/simulator/state', { raw_state: 'UNPAIRED' });
  assert.deepEqual([res.body.status, res.body.raw_state, res.body.last_disconnect_reason], ['disconnected', 'UNPAIRED', 'UNPAIRED']);
  await b.call('POST', '/session/restart');
  await waitFor(async () => (await statusOf(b)).status === 'qr_needed', { what: 'qr_needed after restart' });
  assert.equal((await b.call('POST', '/simulator/state', { raw_state: 'NOT_A_STATE' })).body.field, 'raw_state');
  assert.equal((await b.call('POST', '/simulator/state', { raw_state: 'CONNECTED', status: 'connected' })).status, 400);
});

for (const frozen of ['OPENING', 'TIMEOUT']) {
  test(`a page frozen in ${frozen} stays connected, takes sends, acks none, until restarted`, async (t) => {
    const receiver = await startEventsReceiver(t);
    const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: receiver.url });
    const res = await b.call('POST', '/simulator/state', { raw_state: frozen });
    assert.equal(res.body.status, 'connected');
    assert.equal(res.body.raw_state, frozen);
    const accepted = await send(b, '+56912345678', 'z-1');
    assert.equal(accepted.status, 200);
    await sleep(150);
    assert.equal(ofType(receiver, 'message_ack').length, 0, 'nothing acked');
    assert.equal((await statusOf(b)).raw_state, frozen, 'stuck');

    await b.call('POST', '/session/restart');
    await waitFor(async () => (await statusOf(b)).status === 'connected', { what: 'connected after restart' });
    assert.equal((await statusOf(b)).raw_state, 'CONNECTED');
    const thawed = await send(b, '+56912345678', 'z-2');
    await waitFor(() => ofType(receiver, 'message_ack').filter((a) => a.whatsapp_message_id === thawed.body.whatsapp_message_id).length === 3, { what: 'acks after the restart' });
  });
}

test('memory_growth_mb_per_min makes rss_bytes grow at that pace, and a restart frees it', async (t) => {
  const b = await connectedBridge(t);
  const base = (await statusOf(b)).rss_bytes;
  // 60,000 MiB a minute is 1 MiB a millisecond: measurable in a short test.
  assert.equal((await b.call('POST', '/simulator/config', { memory_growth_mb_per_min: 60_000 })).body.memory_growth_mb_per_min, 60_000);
  await sleep(200);
  const grown = (await statusOf(b)).rss_bytes;
  assert.ok(grown - base >= 150 * MIB, `grew ${(grown - base) / MIB} MiB in 200 ms`);
  assert.ok(grown - base < 1000 * MIB, `grew ${(grown - base) / MIB} MiB in 200 ms`);
  await b.call('POST', '/session/restart');
  const freed = (await statusOf(b)).rss_bytes;
  assert.ok(freed < grown - 100 * MIB, 'a restart frees what the leak took');
  assert.equal((await b.call('POST', '/simulator/config', { memory_growth_mb_per_min: -1 })).status, 400);
});
