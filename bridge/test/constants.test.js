import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ACK_DEVICE, ACK_ERROR, ACK_PENDING, ACK_PLAYED, ACK_READ, ACK_SERVER, ERRORS, ackToDelivery } from '../src/constants.js';
import { BridgeError } from '../src/errors.js';

test('ack values are whatsapp-web.js MessageAck values', () => {
  assert.deepEqual([ACK_ERROR, ACK_PENDING, ACK_SERVER, ACK_DEVICE, ACK_READ, ACK_PLAYED], [-1, 0, 1, 2, 3, 4]);
});

test('ackToDelivery maps every whatsapp-web.js ack level to our delivery event', () => {
  assert.equal(ackToDelivery(-1), 'failed');
  assert.equal(ackToDelivery(0), null);
  assert.equal(ackToDelivery(1), 'sent');
  assert.equal(ackToDelivery(2), 'delivered');
  assert.equal(ackToDelivery(3), 'read');
  assert.equal(ackToDelivery(4), 'read');
  assert.equal(ackToDelivery(99), null);
});

test('error codes carry the HTTP status the dispatcher relies on', () => {
  assert.deepEqual(
    Object.fromEntries(['invalid_number', 'not_registered', 'not_connected', 'rate_limited', 'send_failed', 'unauthorized', 'bad_request'].map((c) => [c, ERRORS[c]])),
    { invalid_number: 422, not_registered: 422, not_connected: 503, rate_limited: 429, send_failed: 502, unauthorized: 401, bad_request: 400 },
  );
  const err = new BridgeError('not_registered', '+1 is not on WhatsApp', 'to');
  assert.equal(err.httpStatus, 422);
  assert.deepEqual(JSON.parse(JSON.stringify(err)), { code: 'not_registered', message: '+1 is not on WhatsApp', field: 'to' });
  assert.throws(() => new BridgeError('no_such_code', 'x'));
});
