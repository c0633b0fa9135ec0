// Idempotency across concurrency, process restarts and a damaged store file.
import assert from 'node:assert/strict';
import { appendFileSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { FILE_NAME, IdempotencyStore } from '../src/idempotency.js';
import { freePort, request, spawnBridge, tempDir, waitFor } from '../test-support/helpers.js';

const TOKEN = 'restart-test-token';
const fileLines = (dir) => readFileSync(path.join(dir, FILE_NAME), 'utf8').split('\n').filter(Boolean);

test('a bridge restarted on the same BRIDGE_DATA_DIR replays a key it saw before the restart', async (t) => {
  const dataDir = tempDir(t);
  const port = String(await freePort());
  const env = { BRIDGE_TOKEN: TOKEN, BRIDGE_DATA_DIR: dataDir, BRIDGE_PORT: port };
  const auth = { authorization: `Bearer ${TOKEN}` };
  const payload = { to: '+56912345678', body: 'Recordatorio', idempotency_key: 'msg-42:recipient-7' };

  const first = await spawnBridge(t, env);
  await waitFor(async () => (await request(first.url, 'GET', '/health', undefined, auth)).body.status === 'connected');
  const sent = await request(first.url, 'POST', '/send', payload, auth);
  assert.equal(sent.status, 200);
  assert.equal(sent.body.replayed, false);
  first.child.kill('SIGKILL'); // no graceful shutdown: the line must already be on disk
  await first.exited;

  const second = await spawnBridge(t, env);
  await waitFor(async () => (await request(second.url, 'GET', '/health', undefined, auth)).body.status === 'connected');
  const again = await request(second.url, 'POST', '/send', payload, auth);
  assert.equal(again.status, 200);
  assert.deepEqual(again.body, { whatsapp_message_id: sent.body.whatsapp_message_id, replayed: true });
  assert.deepEqual((await request(second.url, 'GET', '/simulator/outbox', undefined, auth)).body.messages, []);

  second.child.kill('SIGTERM');
  assert.deepEqual(await second.exited, { code: 0, signal: null }, 'SIGTERM stops the bridge cleanly');
});

test('the store writes one line per successful key and forgets failures', async (t) => {
  const dir = tempDir(t);
  const store = new IdempotencyStore(dir);
  let sends = 0;
  const ok = async () => ({ whatsapp_message_id: `id-${++sends}` });
  assert.deepEqual(await store.run('a', ok), { result: { whatsapp_message_id: 'id-1' }, replayed: false });
  assert.deepEqual(await store.run('a', ok), { result: { whatsapp_message_id: 'id-1' }, replayed: true });
  await assert.rejects(store.run('b', async () => { throw new Error('boom'); }), /boom/);
  assert.deepEqual(await store.run('b', ok), { result: { whatsapp_message_id: 'id-2' }, replayed: false });
  assert.equal(sends, 2);
  assert.equal(fileLines(dir).length, 2);
  assert.equal(store.keyFor('id-2'), 'b');
  assert.equal(store.keyFor('unknown'), null);
});

test('concurrent runs of one key share the in-flight send, including its failure', async (t) => {
  const store = new IdempotencyStore(tempDir(t));
  let calls = 0;
  let fail;
  const slow = () => new Promise((_, reject) => { calls += 1; fail = reject; });
  const a = store.run('k', slow);
  const b = store.run('k', slow);
  fail(new Error('whatsapp said no'));
  await assert.rejects(a, /whatsapp said no/);
  await assert.rejects(b, /whatsapp said no/);
  assert.equal(calls, 1);
});

test('loading skips a line cut short by a crash and drops keys older than the age limit', async (t) => {
  const dir = tempDir(t);
  const now = Date.now();
  const day = 24 * 60 * 60 * 1000;
  writeFileSync(
    path.join(dir, FILE_NAME),
    [
      JSON.stringify({ key: 'old', whatsapp_message_id: 'id-old', at: now - 8 * day }),
      JSON.stringify({ key: 'recent', whatsapp_message_id: 'id-recent', at: now - day }),
    ].join('\n') + '\n',
  );
  appendFileSync(path.join(dir, FILE_NAME), '{"key":"half-writ');
  const store = new IdempotencyStore(dir);
  assert.equal(store.size, 1);
  assert.equal(store.keyFor('id-recent'), 'recent');
  assert.equal(store.keyFor('id-old'), null);
  assert.deepEqual(fileLines(dir).map((l) => JSON.parse(l).key), ['recent'], 'the file was compacted');
  const replay = await store.run('recent', async () => assert.fail('must not send'));
  assert.equal(replay.replayed, true);
});

test('the store stays bounded: beyond maxKeys the oldest keys go and the file is compacted', async (t) => {
  const dir = tempDir(t);
  const store = new IdempotencyStore(dir, { maxKeys: 100 });
  for (let i = 0; i < 1500; i++) await store.run(`k${i}`, async () => ({ whatsapp_message_id: `id${i}` }));
  assert.equal(store.size, 100);
  assert.equal(store.keyFor('id1499'), 'k1499');
  assert.equal(store.keyFor('id1399'), null);
  assert.ok(fileLines(dir).length <= 2 * 100 + 1000, `file has ${fileLines(dir).length} lines`);
  const reopened = new IdempotencyStore(dir, { maxKeys: 100 });
  assert.equal(reopened.size, 100);
  assert.equal(reopened.keyFor('id1450'), 'k1450');
});
