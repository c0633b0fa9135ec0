// Attachments: POST /send with `media`, through the real server, the media store and the simulator,
// against a local HTTP server holding the files.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { createBridge } from '../src/bridge.js';
import { loadConfig } from '../src/config.js';
import { MEDIA_DIR, MediaStore } from '../src/media.js';
import { validateSend } from '../src/server.js';
import { TOKEN, freePort, request, startBridge, startFileServer, tempDir, waitFor } from '../test-support/helpers.js';

const sha256 = (buf) => createHash('sha256').update(buf).digest('hex');
const JPEG = Buffer.concat([Buffer.from([0xff, 0xd8, 0xff, 0xe0]), randomBytes(200_000)]);
const PDF = Buffer.concat([Buffer.from('%PDF-1.7\n'), randomBytes(50_000)]);

/** The `media` of POST /send for `buf` served at `url`. */
function mediaFor(url, buf, overrides = {}) {
  return { url, sha256: sha256(buf), size: buf.length, mime_type: 'image/jpeg', filename: 'flyer.jpg', kind: 'image', ...overrides };
}

async function connectedBridge(t, env) {
  const b = await startBridge(t, env);
  await waitFor(async () => (await b.call('GET', '/status')).body.status === 'connected', { what: 'simulator to connect' });
  return b;
}

const outbox = async (b) => (await b.call('GET', '/simulator/outbox')).body.messages;
const cacheEntries = (dataDir) => {
  const root = path.join(dataDir, MEDIA_DIR);
  return existsSync(root) ? readdirSync(root, { recursive: true }) : [];
};

test('media is refused field by field with 400 bad_request naming media.<field>', async (t) => {
  const b = await connectedBridge(t);
  const good = mediaFor('http://127.0.0.1:8000/api/media/1/content', JPEG);
  const cases = [
    [[], 'media'],
    ['http://x/y.jpg', 'media'],
    [{ ...good, url: 'ftp://example.com/a.jpg' }, 'media.url'],
    [{ ...good, url: 'not a url' }, 'media.url'],
    [{ ...good, url: `http://example.com/${'a'.repeat(2000)}` }, 'media.url'],
    [{ ...good, url: 'http://user:secret@example.com/a.jpg' }, 'media.url'],
    [{ ...good, url: undefined }, 'media.url'],
    [{ ...good, sha256: good.sha256.toUpperCase() }, 'media.sha256'],
    [{ ...good, sha256: good.sha256.slice(1) }, 'media.sha256'],
    [{ ...good, sha256: 42 }, 'media.sha256'],
    [{ ...good, size: 0 }, 'media.size'],
    [{ ...good, size: 1.5 }, 'media.size'],
    [{ ...good, size: '200004' }, 'media.size'],
    [{ ...good, size: 104857601 }, 'media.size'],
    [{ ...good, mime_type: '' }, 'media.mime_type'],
    [{ ...good, mime_type: 'jpeg' }, 'media.mime_type'],
    [{ ...good, mime_type: `image/${'x'.repeat(250)}` }, 'media.mime_type'],
    [{ ...good, filename: '' }, 'media.filename'],
    [{ ...good, filename: '../flyer.jpg' }, 'media.filename'],
    [{ ...good, filename: 'dir\\flyer.jpg' }, 'media.filename'],
    [{ ...good, filename: '..' }, 'media.filename'],
    [{ ...good, filename: 'fly\ner.jpg' }, 'media.filename'],
    [{ ...good, filename: `${'x'.repeat(252)}.jpg` }, 'media.filename'],
    [{ ...good, kind: 'sticker' }, 'media.kind'],
    [{ ...good, kind: undefined }, 'media.kind'],
  ];
  for (const [media, field] of cases) {
    const res = await b.call('POST', '/send', { to: '+56912345678', body: 'caption', idempotency_key: 'v', media });
    assert.equal(res.status, 400, `${field}: ${JSON.stringify(media).slice(0, 80)}`);
    assert.equal(res.body.code, 'bad_request');
    assert.equal(res.body.field, field, JSON.stringify(media).slice(0, 80));
    assert.equal(typeof res.body.message, 'string');
  }
  // With media the caption may be empty, but not longer than a text.
  const long = await b.call('POST', '/send', { to: '+56912345678', body: 'x'.repeat(4097), idempotency_key: 'v', media: good });
  assert.deepEqual([long.status, long.body.field], [400, 'body']);
  const notString = await b.call('POST', '/send', { to: '+56912345678', idempotency_key: 'v', media: good });
  assert.deepEqual([notString.status, notString.body.field], [400, 'body']);
  assert.equal((await outbox(b)).length, 0);
  assert.equal(cacheEntries(b.dataDir).length, 1, 'only the (empty) folder of this process: nothing was fetched');
});

test('the limits themselves are accepted, and media null is a text', () => {
  const edge = {
    url: `https://example.com/${'a'.repeat(2000 - 'https://example.com/'.length)}`,
    sha256: 'a'.repeat(64),
    size: 104857600,
    mime_type: 'audio/ogg; codecs=opus',
    filename: `${'x'.repeat(251)}.pdf`,
    kind: 'document',
  };
  assert.equal(edge.url.length, 2000);
  assert.deepEqual(validateSend({ to: '+56912345678', body: '', idempotency_key: 'k', media: { ...edge, width: 10 } }).media, edge);
  assert.equal(validateSend({ to: '+56912345678', body: 'x', idempotency_key: 'k', media: null }).media, null);
  assert.throws(() => validateSend({ to: '+56912345678', body: '', idempotency_key: 'k', media: null }), { code: 'bad_request', field: 'body' });
  for (const kind of ['image', 'video', 'audio', 'document']) {
    assert.equal(validateSend({ to: '+56912345678', body: 'x', idempotency_key: 'k', media: { ...edge, kind } }).media.kind, kind);
  }
});

test('an image with a caption reaches the outbox byte-identical, described by what the simulator read', async (t) => {
  const files = await startFileServer(t, { '/api/media/1/content': JPEG, '/api/media/2/content': PDF });
  const b = await connectedBridge(t);
  const res = await b.call('POST', '/send', {
    to: '+56912345678',
    body: 'Nuevo menú',
    idempotency_key: 'img-1',
    media: mediaFor(files.url('/api/media/1/content'), JPEG),
  });
  assert.equal(res.status, 200, JSON.stringify(res.body));
  assert.equal(res.body.replayed, false);
  const doc = await b.call('POST', '/send', {
    to: '+56912345678',
    body: '',
    idempotency_key: 'doc-1',
    media: mediaFor(files.url('/api/media/2/content'), PDF, { mime_type: 'application/pdf', filename: 'precios.pdf', kind: 'document' }),
  });
  assert.equal(doc.status, 200, JSON.stringify(doc.body));
  const [image, pdf] = await outbox(b);
  assert.equal(image.body, 'Nuevo menú');
  assert.equal(image.whatsapp_message_id, res.body.whatsapp_message_id);
  assert.deepEqual(image.media, { sha256: sha256(JPEG), size: JPEG.length, mime_type: 'image/jpeg', filename: 'flyer.jpg', kind: 'image' });
  assert.equal(pdf.body, '');
  assert.deepEqual(pdf.media, { sha256: sha256(PDF), size: PDF.length, mime_type: 'application/pdf', filename: 'precios.pdf', kind: 'document' });
});

test('three recipients of one file cause one download; a retried key sends once and fetches nothing', async (t) => {
  const files = await startFileServer(t, { '/f.jpg': JPEG });
  const b = await connectedBridge(t, { SIMULATOR_LATENCY_MS: '50' });
  const media = mediaFor(files.url('/f.jpg'), JPEG);
  const recipients = ['+56911110001', '+56911110002', '+56911110003'];
  const results = await Promise.all(recipients.map((to, i) => b.call('POST', '/send', { to, body: 'hola', idempotency_key: `m:${i}`, media })));
  assert.deepEqual(results.map((r) => r.status), [200, 200, 200]);
  assert.equal(files.gets('/f.jpg'), 1, 'concurrent sends of the same file share one download');

  const later = await b.call('POST', '/send', { to: '+56911110004', body: 'hola', idempotency_key: 'm:3', media });
  assert.equal(later.status, 200);
  const again = await b.call('POST', '/send', { to: '+56911110004', body: 'hola', idempotency_key: 'm:3', media });
  assert.deepEqual(again.body, { whatsapp_message_id: later.body.whatsapp_message_id, replayed: true });
  assert.equal(files.gets('/f.jpg'), 1, 'a later recipient uses the cached file');
  const sent = await outbox(b);
  assert.deepEqual(sent.map((m) => m.to).sort(), [...recipients, '+56911110004']);
  assert.ok(sent.every((m) => m.media.sha256 === sha256(JPEG)));
  assert.equal(b.bridge.media.downloads, 1);
});

test('a file that is not the one described is 422 media_mismatch and nothing is sent', async (t) => {
  const other = randomBytes(JPEG.length);
  const files = await startFileServer(t, {
    '/f.jpg': JPEG,
    '/bigger-chunked.jpg': { body: Buffer.concat([JPEG, Buffer.from('tail')]), chunked: true },
    '/smaller-chunked.jpg': { body: JPEG.subarray(0, 1000), chunked: true },
    '/bigger.jpg': Buffer.concat([JPEG, Buffer.from('tail')]),
  });
  const b = await connectedBridge(t);
  const cases = [
    [mediaFor(files.url('/f.jpg'), JPEG, { sha256: sha256(other) }), 'media.sha256'],
    [mediaFor(files.url('/bigger-chunked.jpg'), JPEG), 'media.size'], // caught while streaming
    [mediaFor(files.url('/smaller-chunked.jpg'), JPEG), 'media.size'],
    [mediaFor(files.url('/bigger.jpg'), JPEG), 'media.size'], // caught from Content-Length
  ];
  for (const [media, field] of cases) {
    const res = await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: `mm:${media.url}`, media });
    assert.equal(res.status, 422, media.url);
    assert.equal(res.body.code, 'media_mismatch');
    assert.equal(res.body.field, field, media.url);
  }
  assert.equal((await outbox(b)).length, 0);
  assert.deepEqual(readdirSync(b.bridge.media.dir), [], 'no partial or wrong file is kept');

  // A mismatch is not remembered: the same key with the right description sends.
  const fixed = await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: `mm:${files.url('/f.jpg')}`, media: mediaFor(files.url('/f.jpg'), JPEG) });
  assert.equal(fixed.status, 200);
});

test('an unreachable URL or a refused fetch is 502 media_unavailable and the key stays retryable', async (t) => {
  const files = await startFileServer(t, { '/gone.jpg': { status: 404 }, '/forbidden.jpg': { status: 403 }, '/loop': { redirect: '/loop' } });
  const b = await connectedBridge(t);
  const port = await freePort();
  for (const url of [`http://127.0.0.1:${port}/f.jpg`, files.url('/gone.jpg'), files.url('/forbidden.jpg'), files.url('/loop')]) {
    const res = await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: 'u-1', media: mediaFor(url, JPEG) });
    assert.equal(res.status, 502, url);
    assert.equal(res.body.code, 'media_unavailable');
    assert.equal(res.body.field, 'media.url');
  }
  assert.equal(files.gets('/loop'), 6, 'five redirects followed, no more');
  assert.equal((await outbox(b)).length, 0);
  files.files.set('/gone.jpg', JPEG); // the file is back (or a fresh signed URL)
  const retried = await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: 'u-1', media: mediaFor(files.url('/gone.jpg'), JPEG) });
  assert.equal(retried.status, 200);
  assert.equal(retried.body.replayed, false);
});

test('the bridge token goes to the events origin only, never to another origin nor through a redirect', async (t) => {
  const other = await startFileServer(t, { '/signed/b.jpg': PDF });
  const api = await startFileServer(t, { '/api/media/a/content': JPEG, '/api/media/c/content': { redirect: other.url('/signed/c.jpg') } });
  const C = randomBytes(1000);
  other.files.set('/signed/c.jpg', C);
  const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: api.url('/api/bridge/events') });
  const sendOf = async (key, media) => (await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: key, media })).status;

  assert.equal(await sendOf('a', mediaFor(api.url('/api/media/a/content'), JPEG)), 200);
  assert.equal(await sendOf('b', mediaFor(other.url('/signed/b.jpg?token=signed'), PDF)), 200);
  assert.equal(await sendOf('c', mediaFor(api.url('/api/media/c/content'), C)), 200);

  const apiGets = api.requests.filter((r) => r.method === 'GET');
  assert.deepEqual(apiGets.map((r) => [r.path, r.authorization]), [
    ['/api/media/a/content', `Bearer ${TOKEN}`],
    ['/api/media/c/content', `Bearer ${TOKEN}`],
  ]);
  assert.deepEqual(other.requests.map((r) => [r.path, r.authorization]), [
    ['/signed/b.jpg', undefined],
    ['/signed/c.jpg', undefined],
  ]);
});

test('without an events URL the token is sent to no one', async (t) => {
  const files = await startFileServer(t, { '/f.jpg': JPEG });
  const b = await connectedBridge(t, { BRIDGE_EVENTS_URL: '' });
  const res = await b.call('POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: 'k', media: mediaFor(files.url('/f.jpg'), JPEG) });
  assert.equal(res.status, 200);
  assert.equal(files.requests[0].authorization, undefined);
});

test('the media folder is empty once the bridge stops, and a dead process leaves nothing for long', async (t) => {
  const files = await startFileServer(t, { '/f.jpg': JPEG });
  const dataDir = tempDir(t);
  // A folder a killed bridge left behind (its pid is gone).
  const dead = spawnSync(process.execPath, ['-e', '']).pid;
  mkdirSync(path.join(dataDir, MEDIA_DIR, `${dead}-abc123`), { recursive: true });
  writeFileSync(path.join(dataDir, MEDIA_DIR, `${dead}-abc123`, 'leftover'), 'x');

  const config = loadConfig({ BRIDGE_TOKEN: TOKEN, BRIDGE_EVENTS_URL: '', BRIDGE_DATA_DIR: dataDir, SIMULATOR_ACK_DELAY_MS: '0' });
  const bridge = createBridge(config, { log: () => {} });
  let stopped = false;
  t.after(() => !stopped && bridge.stop());
  const url = await bridge.start({ port: 0, host: '127.0.0.1' });
  assert.deepEqual(readdirSync(path.join(dataDir, MEDIA_DIR)), [path.basename(bridge.media.dir)], 'the dead process\'s folder is gone');
  await waitFor(async () => (await request(url, 'GET', '/status')).body.status === 'connected');
  const res = await request(url, 'POST', '/send', { to: '+56912345678', body: 'x', idempotency_key: 'k', media: mediaFor(files.url('/f.jpg'), JPEG) });
  assert.equal(res.status, 200);
  assert.equal(readdirSync(bridge.media.dir).length, 1, 'the file stays cached for the next recipients');

  await bridge.stop();
  stopped = true;
  assert.deepEqual(readdirSync(path.join(dataDir, MEDIA_DIR)), []);
});

test('the cache drops files idle too long and, over its cap, the least recently used', async (t) => {
  const A = randomBytes(3000);
  const B = randomBytes(3000);
  const files = await startFileServer(t, { '/a': A, '/b': B });
  let now = 1_000_000;
  const store = new MediaStore({ dataDir: tempDir(t), token: TOKEN, maxBytes: 5000, idleMs: 60_000, now: () => now });
  t.after(() => store.close());
  const use = (p, buf) => store.use({ ...mediaFor(files.url(p), buf) }, async (file) => sha256(await import('node:fs').then((fs) => fs.readFileSync(file.path))));

  assert.equal(await use('/a', A), sha256(A));
  assert.equal(await use('/a', A), sha256(A));
  assert.equal(files.gets('/a'), 1);
  assert.equal(store.bytes, 3000);

  now += 60_000; // A idle for a minute: dropped at the next look
  assert.equal(await use('/b', B), sha256(B));
  assert.equal(store.bytes, 3000, 'only B is left');
  assert.equal(await use('/a', A), sha256(A));
  assert.equal(files.gets('/a'), 2, 'A was fetched again');
  // A and B together (6000 bytes) exceed the cap (5000): B, the least recently used, went for A.
  assert.equal(store.bytes, 3000);
  assert.equal(readdirSync(store.dir).length, 1);
  assert.equal(await use('/a', A), sha256(A));
  assert.equal(files.gets('/a'), 2);

  // A file in use is never dropped, whatever the cap.
  await store.use(mediaFor(files.url('/b'), B), async (file) => {
    await use('/a', A);
    assert.ok(existsSync(file.path));
  });
});

test('a download in flight when the store closes fails as media_unavailable and leaves no file', async (t) => {
  const big = randomBytes(1024 * 1024);
  const http = await import('node:http');
  // Sends half of the file, then stalls.
  const server = http.createServer((req, res) => {
    res.writeHead(200, { 'content-length': big.length });
    res.write(big.subarray(0, big.length / 2));
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise((resolve) => {
    server.close(resolve);
    server.closeAllConnections();
  }));
  const store = new MediaStore({ dataDir: tempDir(t), token: TOKEN, maxBytes: 10 * 1024 * 1024 });
  const pending = store.use(mediaFor(`http://127.0.0.1:${server.address().port}/big`, big), async () => 'sent');
  const refused = assert.rejects(pending, { code: 'media_unavailable' });
  await waitFor(() => readdirSync(store.dir).length === 1, { what: 'the download to start' });
  await store.close();
  await refused;
  assert.equal(existsSync(store.dir), false);
});
