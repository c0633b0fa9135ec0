// The wwebjs driver against a fake whatsapp-web.js Client that emits the real
// event names and ack values, through the real HTTP server.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import { ACK_DEVICE, ACK_ERROR, ACK_PENDING, ACK_PLAYED, ACK_READ, ACK_SERVER, STATUS } from '../src/constants.js';
import { WwebjsDriver } from '../src/drivers/wwebjs.js';
import { startBridge, startEventsReceiver, waitFor } from '../test-support/helpers.js';

/** Stands in for whatsapp-web.js's Client: same event names, same method names. */
class FakeClient extends EventEmitter {
  constructor({ registered = () => true, initialize } = {}) {
    super();
    this.calls = { initialize: 0, getNumberId: [], sendMessage: [], destroy: 0, logout: 0 };
    this.registered = registered;
    this.initializeImpl = initialize;
    this.info = null;
  }
  async initialize() {
    this.calls.initialize += 1;
    if (this.initializeImpl) await this.initializeImpl(this);
  }
  async getNumberId(number) {
    this.calls.getNumberId.push(number);
    return this.registered(number) ? { server: 'c.us', user: number, _serialized: `${number}@c.us` } : null;
  }
  async sendMessage(chatId, content, options) {
    this.calls.sendMessage.push({ chatId, content, options });
    return { id: { fromMe: true, remote: chatId, id: `3EB0${this.calls.sendMessage.length}`, _serialized: `true_${chatId}_3EB0${this.calls.sendMessage.length}` } };
  }
  async destroy() {
    this.calls.destroy += 1;
  }
  async logout() {
    this.calls.logout += 1;
  }
  // What whatsapp-web.js does when the phone scans and the page is ready.
  becomeReady(user = '56911112222') {
    this.info = { wid: { user, server: 'c.us', _serialized: `${user}@c.us` } };
    this.emit('authenticated');
    this.emit('ready');
  }
}

/** A factory that records every client it builds. */
function fakeFactory(options) {
  const clients = [];
  const factory = () => {
    const client = new FakeClient(options);
    clients.push(client);
    return client;
  };
  return { factory, clients, last: () => clients.at(-1) };
}

const TINY_BACKOFF = { initialMs: 5, maxMs: 40 };

async function wwebjsBridge(t, fake, env = {}) {
  return startBridge(t, { WHATSAPP_DRIVER: 'wwebjs', ...env }, { clientFactory: fake.factory, backoff: TINY_BACKOFF });
}

const statusOf = async (b) => (await b.call('GET', '/status')).body;

test('qr -> qr_needed with a PNG data URL; ready -> connected with the paired phone', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  assert.equal((await statusOf(b)).status, 'initializing');
  assert.equal(fake.last().calls.initialize, 1);

  fake.last().emit('qr', '2@abcdefghijklmnop,QRDATA==,more');
  const qr = await waitFor(async () => {
    const s = await statusOf(b);
    return s.status === 'qr_needed' && s;
  }, { what: 'qr_needed' });
  assert.match(qr.qr_code, /^data:image\/png;base64,/);
  assert.equal(qr.phone, null);

  fake.last().becomeReady('56911112222');
  const ready = await waitFor(async () => {
    const s = await statusOf(b);
    return s.status === 'connected' && s;
  }, { what: 'connected' });
  assert.equal(ready.phone, '+56911112222');
  assert.equal(ready.qr_code, null);
  assert.equal(ready.last_error, null);
  assert.equal((await b.call('GET', '/health')).body.driver, 'wwebjs');
});

test('send looks the number up, then sends to its serialized id without marking the chat seen', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  const res = await b.call('POST', '/send', { to: '+56912345678', body: 'Hola', idempotency_key: 'w-1' });
  assert.equal(res.status, 200);
  assert.deepEqual(res.body, { whatsapp_message_id: 'true_56912345678@c.us_3EB01', replayed: false });
  assert.deepEqual(fake.last().calls.getNumberId, ['56912345678']);
  assert.deepEqual(fake.last().calls.sendMessage, [{ chatId: '56912345678@c.us', content: 'Hola', options: { sendSeen: false } }]);

  const again = await b.call('POST', '/send', { to: '+56912345678', body: 'Hola', idempotency_key: 'w-1' });
  assert.equal(again.body.replayed, true);
  assert.equal(fake.last().calls.sendMessage.length, 1);
});

test('getNumberId null -> 422 not_registered and sendMessage is never called', async (t) => {
  const fake = fakeFactory({ registered: () => false });
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  const res = await b.call('POST', '/send', { to: '+56912345678', body: 'Hola', idempotency_key: 'w-nr' });
  assert.equal(res.status, 422);
  assert.equal(res.body.code, 'not_registered');
  assert.equal(fake.last().calls.getNumberId.length, 1);
  assert.equal(fake.last().calls.sendMessage.length, 0);
});

test('sending before ready is 503 not_connected and touches no client method', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  const res = await b.call('POST', '/send', { to: '+56912345678', body: 'Hola', idempotency_key: 'w-early' });
  assert.equal(res.status, 503);
  assert.equal(res.body.code, 'not_connected');
  assert.equal(fake.last().calls.getNumberId.length, 0);
});

test('a sendMessage failure is 502 send_failed and the key stays retryable', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  const original = fake.last().sendMessage;
  fake.last().sendMessage = async () => {
    throw new Error('Evaluation failed: rate-overlimit');
  };
  const res = await b.call('POST', '/send', { to: '+56912345678', body: 'Hola', idempotency_key: 'w-fail' });
  assert.equal(res.status, 502);
  assert.equal(res.body.code, 'send_failed');
  assert.match(res.body.message, /rate-overlimit/);
  fake.last().sendMessage = original;
  assert.equal((await b.call('POST', '/send', { to: '+56912345678', body: 'Hola', idempotency_key: 'w-fail' })).status, 200);
});

test('message_ack 1/2/3/4/-1 become sent/delivered/read/read/failed events; 0 and others are ignored', async (t) => {
  const receiver = await startEventsReceiver(t);
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake, { BRIDGE_EVENTS_URL: receiver.url });
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  const { whatsapp_message_id } = (await b.call('POST', '/send', { to: '+56912345678', body: 'Hola', idempotency_key: 'w-ack' })).body;
  const msg = { id: { fromMe: true, _serialized: whatsapp_message_id } };
  for (const ack of [ACK_PENDING, ACK_SERVER, ACK_DEVICE, ACK_READ, ACK_PLAYED, ACK_ERROR]) fake.last().emit('message_ack', msg, ack);
  fake.last().emit('message_ack', { id: { fromMe: false, _serialized: 'false_x@c.us_1' } }, ACK_READ); // an incoming message

  const acks = await waitFor(() => {
    const got = receiver.received.filter((r) => r.event.type === 'message_ack');
    return got.length >= 5 && got;
  }, { what: 'five ack events' });
  await new Promise((r) => setTimeout(r, 50)); // would catch a sixth, wrong event
  const all = receiver.received.filter((r) => r.event.type === 'message_ack');
  assert.deepEqual(all.map((r) => r.event.ack), ['sent', 'delivered', 'read', 'read', 'failed']);
  assert.ok(acks.every((r) => r.event.whatsapp_message_id === whatsapp_message_id && r.event.idempotency_key === 'w-ack' && r.signatureValid));
});

test('an ack that arrives before sendMessage returns still carries the idempotency key', async (t) => {
  const receiver = await startEventsReceiver(t);
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake, { BRIDGE_EVENTS_URL: receiver.url });
  const client = fake.last();
  client.becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  client.sendMessage = async (chatId) => {
    const id = { fromMe: true, _serialized: `true_${chatId}_EARLY` };
    client.emit('message_ack', { id }, ACK_SERVER); // WhatsApp answers before the page call returns
    await new Promise((r) => setTimeout(r, 30));
    return { id };
  };
  await b.call('POST', '/send', { to: '+56912345678', body: 'Hola', idempotency_key: 'w-early-ack' });
  const ack = await waitFor(() => receiver.received.find((r) => r.event.type === 'message_ack'), { what: 'ack event' });
  assert.equal(ack.event.idempotency_key, 'w-early-ack');
  assert.equal(ack.event.ack, 'sent');
});

test('disconnected -> status disconnected with the reason, client destroyed and rebuilt with growing backoff', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  const first = fake.last();
  first.emit('disconnected', 'NAVIGATION');
  const down = await statusOf(b);
  assert.equal(down.status, 'disconnected');
  assert.equal(down.last_error, 'disconnected: NAVIGATION');
  assert.equal((await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: 'w-d' })).body.code, 'not_connected');

  await waitFor(() => fake.clients.length === 2, { what: 'a rebuilt client' });
  assert.equal(first.calls.destroy, 1, 'the old client was destroyed before rebuilding');
  const rebuilding = await statusOf(b);
  assert.equal(rebuilding.status, 'disconnected', 'a rebuild keeps reporting disconnected until it shows a QR or is ready');
  assert.equal(rebuilding.last_error, 'disconnected: NAVIGATION');
  assert.equal(fake.last().calls.initialize, 1);
  first.emit('ready'); // a stale client must not flip the status
  assert.notEqual((await statusOf(b)).status, 'connected');

  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected', { what: 'reconnected' });
  assert.ok(b.lines.some((l) => /rebuilding the whatsapp client in \d+ ms \(attempt 1\)/.test(l)));
});

test('a failing initialize() keeps retrying with exponential backoff capped at the maximum', async () => {
  let builds = 0;
  const stamps = [];
  const driver = new WwebjsDriver({
    sessionPath: '/nonexistent',
    chromePath: '/nonexistent',
    puppeteerArgs: [],
    backoff: { initialMs: 10, maxMs: 80 },
    clientFactory: () => {
      builds += 1;
      stamps.push(performance.now());
      return new FakeClient({ initialize: async () => { throw new Error('net::ERR_NAME_NOT_RESOLVED at https://web.whatsapp.com/'); } });
    },
  });
  const statuses = [];
  driver.on('status', (s) => statuses.push(s));
  await driver.start();
  await waitFor(() => builds >= 7, { timeoutMs: 5000, what: 'seven builds' });
  await driver.stop();
  const buildsAtStop = builds;
  assert.equal(driver.status().status, STATUS.DISCONNECTED);
  assert.match(driver.status().last_error, /^initialize failed: net::ERR_NAME_NOT_RESOLVED/);
  const gaps = stamps.slice(1).map((s, i) => s - stamps[i]);
  // Jitter keeps each wait within 50-100% of 10, 20, 40, 80, 80, 80 ms (plus timer slack).
  const bases = [10, 20, 40, 80, 80, 80];
  gaps.slice(0, 6).forEach((gap, i) => assert.ok(gap >= bases[i] / 2 - 2 && gap < bases[i] + 200, `gap ${i} = ${gap.toFixed(1)} ms for base ${bases[i]}`));
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(builds, buildsAtStop, 'no rebuild after stop()');
  assert.ok(statuses.some((s) => s.status === 'disconnected'));
});

test('auth_failure -> disconnected with the reason, then a new client', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().emit('auth_failure', 'session restore failed');
  const s = await statusOf(b);
  assert.equal(s.status, 'disconnected');
  assert.equal(s.last_error, 'auth_failure: session restore failed');
  await waitFor(() => fake.clients.length === 2, { what: 'a rebuilt client' });
});

test('restart destroys the client and initializes a new one; stop destroys it', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  const res = await b.call('POST', '/restart');
  assert.equal(res.status, 200);
  assert.equal(res.body.status, 'initializing');
  assert.equal(fake.clients.length, 2);
  assert.equal(fake.clients[0].calls.destroy, 1);
  await b.bridge.stop();
  assert.equal(fake.clients[1].calls.destroy, 1);
});

test('logout logs the client out, reports disconnected, then comes back asking for a QR', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  const res = await b.call('POST', '/logout');
  assert.equal(res.status, 200);
  assert.equal(res.body.status, 'disconnected');
  assert.equal(fake.clients[0].calls.logout, 1);
  assert.equal(fake.clients[0].calls.destroy, 1);
  assert.equal((await statusOf(b)).phone, null);
  await waitFor(() => fake.clients.length === 2, { what: 'a new client after logout' });
  fake.last().emit('qr', '2@new-pairing');
  await waitFor(async () => (await statusOf(b)).status === 'qr_needed', { what: 'qr_needed after logout' });
});

test('simulator admin routes do not exist under wwebjs', async (t) => {
  const b = await wwebjsBridge(t, fakeFactory());
  for (const [method, route] of [['GET', '/simulator/outbox'], ['DELETE', '/simulator/outbox'], ['POST', '/simulator/state'], ['POST', '/simulator/config']]) {
    const res = await b.call(method, route, method === 'POST' ? {} : undefined);
    assert.equal(res.status, 404, `${method} ${route}`);
    assert.equal(res.body.code, 'not_found');
  }
});

test('when destroy() fails, the browser process is killed instead', async () => {
  const killed = [];
  const driver = new WwebjsDriver({
    sessionPath: '/nonexistent',
    chromePath: '/nonexistent',
    puppeteerArgs: [],
    clientFactory: () => {
      const client = new FakeClient();
      client.destroy = async () => { throw new Error('Protocol error: Target closed'); };
      client.pupBrowser = { process: () => ({ kill: (signal) => killed.push(signal) }) };
      return client;
    },
  });
  await driver.start();
  await driver.stop();
  assert.deepEqual(killed, ['SIGKILL']);
});

test('stop() during initialize() waits for the launch to settle before destroying', async () => {
  const order = [];
  const driver = new WwebjsDriver({
    sessionPath: '/nonexistent',
    chromePath: '/nonexistent',
    puppeteerArgs: [],
    clientFactory: () => {
      const client = new FakeClient({
        initialize: async () => {
          await new Promise((r) => setTimeout(r, 50)); // puppeteer still launching the browser
          order.push('initialize settled');
        },
      });
      client.destroy = async () => { order.push('destroy'); };
      return client;
    },
  });
  await driver.start();
  await driver.stop();
  assert.deepEqual(order, ['initialize settled', 'destroy']);
});

test('concurrent restarts leave exactly one live client', async (t) => {
  const fake = fakeFactory({ initialize: () => new Promise((r) => setTimeout(r, 20)) });
  const b = await wwebjsBridge(t, fake);
  const answers = await Promise.all([b.call('POST', '/restart'), b.call('POST', '/restart'), b.call('POST', '/restart')]);
  assert.deepEqual(answers.map((a) => a.status), [200, 200, 200]);
  assert.equal(fake.clients.length, 4);
  assert.deepEqual(fake.clients.map((c) => c.calls.destroy), [1, 1, 1, 0], 'every replaced client was destroyed once');
});

test('a restart while a rebuild is pending does not start a second client', async (t) => {
  const fake = fakeFactory();
  const b = await startBridge(t, { WHATSAPP_DRIVER: 'wwebjs' }, { clientFactory: fake.factory, backoff: { initialMs: 40, maxMs: 40 } });
  fake.last().emit('disconnected', 'CONFLICT'); // schedules a rebuild 20-40 ms from now
  await b.call('POST', '/restart');
  await new Promise((r) => setTimeout(r, 100)); // past the rebuild's moment
  assert.equal(fake.clients.length, 2);
  assert.deepEqual(fake.clients.map((c) => c.calls.destroy), [1, 0]);
});
