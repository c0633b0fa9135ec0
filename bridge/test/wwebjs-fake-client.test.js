// The wwebjs driver against a fake whatsapp-web.js Client that emits the real
// event names and ack values, through the real HTTP server.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import { ACK_DEVICE, ACK_ERROR, ACK_PENDING, ACK_PLAYED, ACK_READ, ACK_SERVER, STATUS } from '../src/constants.js';
import { UNRESOLVED_SENDER_LINE, WwebjsDriver, loadMessageMedia } from '../src/drivers/wwebjs.js';
import { startBridge, startEventsReceiver, startFileServer, waitFor } from '../test-support/helpers.js';

/** Stands in for whatsapp-web.js's Client: same event names, same method names. */
class FakeClient extends EventEmitter {
  constructor({ registered = () => true, initialize, lids = {} } = {}) {
    super();
    this.calls = { initialize: 0, getNumberId: [], sendMessage: [], media: [], destroy: 0, logout: 0, getContactLidAndPhone: [] };
    this.registered = registered;
    this.lids = lids; // "123@lid" -> "56911112222@c.us" that WhatsApp Web can resolve
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
    // A MessageMedia (whatsapp-web.js sends it with options.caption and options.sendMediaAsDocument).
    if (typeof content === 'object' && content !== null) {
      this.calls.media.push({ chatId, content, mimetype: content.mimetype, filename: content.filename, data: content.data, options });
    }
    return { id: { fromMe: true, remote: chatId, id: `3EB0${this.calls.sendMessage.length}`, _serialized: `true_${chatId}_3EB0${this.calls.sendMessage.length}` } };
  }
  // whatsapp-web.js 1.34: [{lid, pn}] with pn undefined when WhatsApp will not tell.
  async getContactLidAndPhone(userIds) {
    this.calls.getContactLidAndPhone.push(userIds);
    return [].concat(userIds).map((id) => ({ lid: id, pn: this.lids[id] }));
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

test("WhatsApp's error 463 from sendMessage is 403 restricted_new_chats, not send_failed", async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  const original = fake.last().sendMessage;
  for (const reason of ['Evaluation failed: Error: 463', 'Your account has been restricted']) {
    fake.last().sendMessage = async () => {
      throw new Error(reason);
    };
    const res = await b.call('POST', '/send', { to: '+56912345678', body: 'Hola', idempotency_key: `w-463-${reason.length}` });
    assert.equal(res.status, 403);
    assert.equal(res.body.code, 'restricted_new_chats');
    assert.equal(res.body.field, 'to');
  }
  fake.last().sendMessage = original;
});

test('an attachment is sent as a MessageMedia with its caption; a document as a document', async (t) => {
  const MessageMedia = await loadMessageMedia();
  const jpeg = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff]), randomBytes(40_000)]);
  const pdf = Buffer.concat([Buffer.from('%PDF-1.7\n'), randomBytes(20_000)]);
  const files = await startFileServer(t, { '/flyer.jpg': jpeg, '/precios.pdf': pdf });
  const describe = (p, buf, extra) => ({
    url: files.url(p), sha256: createHash('sha256').update(buf).digest('hex'), size: buf.length, ...extra,
  });
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');

  const image = await b.call('POST', '/send', {
    to: '+56912345678', body: 'Nuevo menú', idempotency_key: 'w-img',
    media: describe('/flyer.jpg', jpeg, { mime_type: 'image/jpeg', filename: 'flyer.jpg', kind: 'image' }),
  });
  assert.equal(image.status, 200, JSON.stringify(image.body));
  const doc = await b.call('POST', '/send', {
    to: '+56912345678', body: '', idempotency_key: 'w-doc',
    media: describe('/precios.pdf', pdf, { mime_type: 'application/pdf', filename: 'precios.pdf', kind: 'document' }),
  });
  assert.equal(doc.status, 200, JSON.stringify(doc.body));

  const [sentImage, sentDoc] = fake.last().calls.media;
  assert.ok(sentImage.content instanceof MessageMedia, 'the class whatsapp-web.js checks with instanceof');
  assert.equal(sentImage.chatId, '56912345678@c.us');
  assert.deepEqual([sentImage.mimetype, sentImage.filename, sentImage.data], ['image/jpeg', 'flyer.jpg', jpeg.toString('base64')]);
  assert.deepEqual(sentImage.options, { sendSeen: false, caption: 'Nuevo menú', sendMediaAsDocument: false });
  assert.ok(sentDoc.content instanceof MessageMedia);
  assert.deepEqual([sentDoc.mimetype, sentDoc.filename, sentDoc.data], ['application/pdf', 'precios.pdf', pdf.toString('base64')]);
  assert.deepEqual(sentDoc.options, { sendSeen: false, caption: undefined, sendMediaAsDocument: true });
  assert.equal(fake.last().calls.sendMessage.length, 2);

  // Not on WhatsApp: nothing is sent (the file was fetched, and is kept for the next recipient).
  fake.last().registered = () => false;
  const nr = await b.call('POST', '/send', {
    to: '+56912340000', body: 'x', idempotency_key: 'w-img-nr',
    media: describe('/flyer.jpg', jpeg, { mime_type: 'image/jpeg', filename: 'flyer.jpg', kind: 'image' }),
  });
  assert.equal(nr.status, 422);
  assert.equal(nr.body.code, 'not_registered');
  assert.equal(fake.last().calls.sendMessage.length, 2);
  assert.equal(files.gets('/flyer.jpg'), 1);
});

test('a failed media send keeps the not_registered/463/send_failed answers', async (t) => {
  const jpeg = randomBytes(5000);
  const files = await startFileServer(t, { '/f.jpg': jpeg });
  const media = { url: files.url('/f.jpg'), sha256: createHash('sha256').update(jpeg).digest('hex'), size: jpeg.length, mime_type: 'image/jpeg', filename: 'f.jpg', kind: 'image' };
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  for (const [reason, status, code] of [['Evaluation failed: Error: 463', 403, 'restricted_new_chats'], ['Evaluation failed: media upload', 502, 'send_failed']]) {
    fake.last().sendMessage = async () => {
      throw new Error(reason);
    };
    const res = await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: `w-mf-${status}`, media });
    assert.deepEqual([res.status, res.body.code], [status, code]);
  }
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
  for (const [method, route] of [['GET', '/simulator/outbox'], ['DELETE', '/simulator/outbox'], ['POST', '/simulator/state'], ['POST', '/simulator/config'], ['POST', '/simulator/inbound']]) {
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

// ---- incoming messages ----

let serial = 0;
/** An incoming message as whatsapp-web.js's Message exposes it (src/structures/Message.js). */
function incoming(from, body, overrides = {}) {
  serial += 1;
  const id = { fromMe: false, remote: from, id: `3A${String(serial).padStart(18, '0')}`, _serialized: `false_${from}_3A${String(serial).padStart(18, '0')}` };
  return { id, from, to: '56911112222@c.us', author: undefined, fromMe: false, isStatus: false, broadcast: false, timestamp: 1737988200 + serial, body, type: 'chat', hasMedia: false, ...overrides };
}

async function inboundBridge(t, fakeOptions) {
  const receiver = await startEventsReceiver(t);
  const fake = fakeFactory(fakeOptions);
  const b = await wwebjsBridge(t, fake, { BRIDGE_EVENTS_URL: receiver.url });
  fake.last().becomeReady('15550000001');
  await waitFor(async () => (await statusOf(b)).status === 'connected');
  const inbound = () => receiver.received.filter((r) => r.event.type === 'inbound_message');
  return { b, fake, client: fake.last(), receiver, inbound };
}

test('a reply from a @c.us sender becomes an inbound_message event with its phone, text, id and time', async (t) => {
  const { b, client, inbound } = await inboundBridge(t);
  const msg = incoming('56922223333@c.us', 'BAJA', { timestamp: 1737988200 });
  client.emit('message', msg);
  const [got] = await waitFor(() => inbound().length === 1 && inbound(), { what: 'inbound_message event' });
  assert.equal(got.signatureValid, true);
  assert.deepEqual(Object.keys(got.event).sort(), ['at', 'event_id', 'phone', 'text', 'type', 'whatsapp_message_id']);
  assert.deepEqual({ ...got.event, event_id: undefined }, {
    event_id: undefined,
    type: 'inbound_message',
    phone: '+56922223333',
    text: 'BAJA',
    whatsapp_message_id: msg.id._serialized,
    at: '2025-01-27T14:30:00.000Z',
  });
  assert.equal(client.calls.getContactLidAndPhone.length, 0, 'a @c.us sender needs no lookup');
  assert.ok(!b.lines.some((l) => l.includes('BAJA')));
});

test('a @lid sender is resolved to its phone through getContactLidAndPhone, once per LID', async (t) => {
  const { client, inbound } = await inboundBridge(t, { lids: { '210987654321098@lid': '56944445555@c.us' } });
  const first = incoming('210987654321098@lid', 'BAJA');
  const second = incoming('210987654321098@lid', 'no me escriban más');
  client.emit('message', first);
  client.emit('message', second);
  const got = await waitFor(() => inbound().length === 2 && inbound(), { what: 'two inbound_message events' });
  assert.deepEqual(got.map((r) => [r.event.phone, r.event.text, r.event.whatsapp_message_id]), [
    ['+56944445555', 'BAJA', first.id._serialized],
    ['+56944445555', 'no me escriban más', second.id._serialized],
  ]);
  assert.deepEqual(client.calls.getContactLidAndPhone, [['210987654321098@lid']], 'the answer is cached');
});

test('a @lid sender whose phone cannot be resolved is dropped with one line that holds no text', async (t) => {
  const { b, client, inbound } = await inboundBridge(t, { lids: { '111@lid': '56966667777@c.us' } });
  client.emit('message', incoming('999999999999999@lid', 'BAJA secreto-unresolved')); // WhatsApp gives no pn
  const failing = incoming('888888888888888@lid', 'BAJA secreto-lookup-failed');
  const original = client.getContactLidAndPhone.bind(client);
  client.getContactLidAndPhone = async (ids) => {
    if ([].concat(ids).includes(failing.from)) throw new Error('Evaluation failed: t');
    return original(ids);
  };
  client.emit('message', failing);
  client.emit('message', incoming('111@lid', 'later reply')); // the chain goes on after a drop

  const [got] = await waitFor(() => inbound().length === 1 && inbound(), { what: 'the resolvable reply' });
  assert.equal(got.event.phone, '+56966667777');
  await new Promise((r) => setTimeout(r, 50)); // would catch a stray event
  assert.equal(inbound().length, 1);
  assert.equal(b.lines.filter((l) => l === UNRESOLVED_SENDER_LINE).length, 2);
  for (const line of b.lines) assert.ok(!line.includes('secreto'), `text leaked: ${line}`);
  for (const line of b.lines) assert.ok(!/999999999999999|888888888888888/.test(line), `sender leaked: ${line}`);
});

test('status broadcasts, groups, channels, our own messages and messages without typed words are skipped', async (t) => {
  const { b, client, inbound } = await inboundBridge(t);
  const skipped = [
    incoming('status@broadcast', 'my status', { isStatus: true, author: '56922223333@c.us' }),
    incoming('56922223333@c.us', 'status seen through its id only', { isStatus: false, id: { fromMe: false, remote: 'status@broadcast', _serialized: 'false_status@broadcast_X' } }),
    incoming('120363012345678901@g.us', 'BAJA in a group', { author: '56922223333@c.us' }),
    incoming('120363012345678901@newsletter', 'a channel post'),
    incoming('56922223333@c.us', 'sent from the operator phone', { fromMe: true }),
    incoming('56922223333@c.us', 'fromMe only in the id', { id: { fromMe: true, remote: '56922223333@c.us', _serialized: 'true_56922223333@c.us_Y' } }),
    incoming('56922223333@c.us', '', { type: 'image', hasMedia: true }), // a photo without caption
    incoming('56922223333@c.us', '', { type: 'ptt', hasMedia: true }),
    incoming('56922223333@c.us', '', { type: 'sticker', hasMedia: true }),
    incoming('56922223333@c.us', '/9j/4AAQSkZJRgABAQ', { type: 'location' }), // a location's body is its thumbnail
    incoming('56922223333@c.us', 'BEGIN:VCARD\nEND:VCARD', { type: 'vcard' }),
    incoming('56922223333@c.us', '', { type: 'revoked' }),
    incoming('56922223333@c.us', '   \n ', { type: 'chat' }),
  ];
  const caption = incoming('56922223333@c.us', 'BAJA (in a photo caption)', { type: 'image', hasMedia: true });
  const sentinel = incoming('56922223333@c.us', 'last one');
  for (const msg of skipped) client.emit('message', msg);
  client.emit('message', caption);
  client.emit('message', sentinel);
  const got = await waitFor(() => inbound().length >= 2 && inbound(), { what: 'caption and sentinel' });
  await new Promise((r) => setTimeout(r, 50)); // would catch a stray event
  assert.equal(inbound().length, 2);
  assert.deepEqual(got.map((r) => r.event.text), ['BAJA (in a photo caption)', 'last one']);
  assert.deepEqual(got.map((r) => r.event.whatsapp_message_id), [caption.id._serialized, sentinel.id._serialized]);
  assert.ok(!b.lines.some((l) => l.includes(UNRESOLVED_SENDER_LINE)), 'skipped messages are not "unresolved"');
});

test('replies keep their arrival order even when a LID lookup is slow', async (t) => {
  const { client, inbound } = await inboundBridge(t, { lids: { '5@lid': '56955555555@c.us' } });
  const original = client.getContactLidAndPhone.bind(client);
  client.getContactLidAndPhone = async (ids) => {
    await new Promise((r) => setTimeout(r, 60));
    return original(ids);
  };
  client.emit('message', incoming('5@lid', 'BAJA'));
  client.emit('message', incoming('56922223333@c.us', 'hola'));
  const got = await waitFor(() => inbound().length === 2 && inbound(), { what: 'two events' });
  assert.deepEqual(got.map((r) => r.event.text), ['BAJA', 'hola']);
});

test('messages from a replaced client are ignored', async (t) => {
  const { b, fake, inbound } = await inboundBridge(t);
  const old = fake.last();
  await b.call('POST', '/restart');
  old.emit('message', incoming('56922223333@c.us', 'from the old client'));
  fake.last().becomeReady('15550000001');
  fake.last().emit('message', incoming('56922223333@c.us', 'from the new client'));
  const got = await waitFor(() => inbound().length >= 1 && inbound(), { what: 'one event' });
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(inbound().map((r) => r.event.text), ['from the new client']);
  assert.equal(got[0].event.phone, '+56922223333');
});

test('whatsapp-web.js states reach /status as raw_state; OPENING while connected keeps the status', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected', { what: 'connected' });
  assert.equal((await statusOf(b)).raw_state, 'CONNECTED');
  fake.last().emit('change_state', 'OPENING');
  const frozen = await waitFor(async () => {
    const s = await statusOf(b);
    return s.raw_state === 'OPENING' && s;
  }, { what: 'raw_state OPENING' });
  assert.equal(frozen.status, 'connected', 'whatsapp-web.js keeps the client in OPENING; the backend judges a frozen page');
  fake.last().emit('change_state', 'CONNECTED');
  await waitFor(async () => (await statusOf(b)).raw_state === 'CONNECTED', { what: 'raw_state CONNECTED' });
});

test('a disconnect for UNPAIRED is reported with its reason and rebuilt; TOS_BLOCK is not rebuilt until restarted', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected', { what: 'connected' });

  fake.last().emit('disconnected', 'UNPAIRED');
  const unpaired = await statusOf(b);
  assert.deepEqual([unpaired.status, unpaired.raw_state, unpaired.last_disconnect_reason], ['disconnected', 'UNPAIRED', 'UNPAIRED']);
  await waitFor(() => fake.clients.length === 2, { what: 'a rebuilt client' });
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected', { what: 'connected again' });

  fake.last().emit('disconnected', 'TOS_BLOCK');
  const banned = await statusOf(b);
  assert.deepEqual([banned.status, banned.raw_state, banned.last_disconnect_reason], ['disconnected', 'TOS_BLOCK', 'TOS_BLOCK']);
  await waitFor(() => fake.clients[1].calls.destroy >= 1, { what: 'the banned client destroyed' });
  await new Promise((r) => setTimeout(r, 200)); // several backoffs' worth
  assert.equal(fake.clients.length, 2, 'no rebuild of a banned number');
  assert.ok(b.lines.some((l) => l.includes('WhatsApp reports TOS_BLOCK; not reconnecting')));

  assert.deepEqual((await b.call('POST', '/session/restart')).body, { status: 'initializing' });
  assert.equal(fake.clients.length, 3, 'a person asked: one new client');
});

test('/session/stop destroys the client and builds none until /session/start', async (t) => {
  const fake = fakeFactory();
  const b = await wwebjsBridge(t, fake);
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected', { what: 'connected' });

  assert.deepEqual((await b.call('POST', '/session/stop')).body, { status: 'stopped' });
  assert.equal(fake.clients[0].calls.destroy, 1);
  assert.equal(fake.clients[0].listenerCount('ready'), 0, 'its events are no longer heard');
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(fake.clients.length, 1, 'nothing rebuilt while stopped');
  assert.equal((await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: 'stopped' })).body.code, 'not_connected');

  const [a, again] = await Promise.all([b.call('POST', '/session/start'), b.call('POST', '/session/start')]);
  assert.deepEqual([a.body, again.body], [{ status: 'initializing' }, { status: 'initializing' }]);
  assert.equal(fake.clients.length, 2, 'two starts at once make one client');
  fake.last().becomeReady();
  await waitFor(async () => (await statusOf(b)).status === 'connected', { what: 'connected after start' });
});
