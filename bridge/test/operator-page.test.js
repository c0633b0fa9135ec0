// The operator page in a real headless Chromium: enter the token, see the
// status, and see the QR image render when WhatsApp needs a scan.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CHROMIUM, NO_CHROMIUM, TOKEN, startBridge, waitFor } from '../test-support/helpers.js';

const LAUNCH_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

async function openPage(t, url) {
  const { default: puppeteer } = await import('puppeteer-core');
  const profile = mkdtempSync(path.join(os.tmpdir(), 'bridge-page-profile-'));
  const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true, args: LAUNCH_ARGS, userDataDir: profile });
  // The browser first, then its profile (one hook: node:test runs `after` hooks in the order added).
  t.after(async () => {
    await browser.close();
    rmSync(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  });
  const page = await browser.newPage();
  const problems = [];
  page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
  page.on('console', (msg) => msg.type() === 'error' && problems.push(`console: ${msg.text()}`));
  await page.goto(url, { waitUntil: 'load' });
  return { page, problems };
}

const text = (page, selector) => page.$eval(selector, (el) => el.textContent);
const visible = (page, selector) => page.$eval(selector, (el) => !el.closest('[hidden]'));

test('the operator enters the token once, sees the status, and sees the QR render when qr_needed', { skip: NO_CHROMIUM, timeout: 60_000 }, async (t) => {
  const b = await startBridge(t);
  await waitFor(async () => (await b.call('GET', '/status')).body.status === 'connected');
  const { page, problems } = await openPage(t, `${b.url}/`);

  assert.equal(await visible(page, '#login'), true, 'asks for the token first');
  await page.type('#token', 'wrong-token');
  await page.click('#save');
  await page.waitForFunction(() => !document.querySelector('#login-error').hidden, { timeout: 10_000 });
  assert.match(await text(page, '#login-error'), /not accepted/);

  await page.type('#token', TOKEN);
  await page.click('#save');
  await page.waitForFunction(() => document.querySelector('#status').textContent === 'connected', { timeout: 10_000 });
  assert.equal(await text(page, '#phone'), '+15550000001');
  assert.equal(await visible(page, '#qr-box'), false);
  const cookie = (await page.cookies()).find((c) => c.name === 'bridge_token');
  assert.equal(cookie.value, TOKEN);
  assert.equal(cookie.sameSite, 'Strict');

  await b.call('POST', '/simulator/state', { status: 'qr_needed', reason: 'phone unlinked' });
  await page.waitForFunction(() => {
    const img = document.querySelector('#qr');
    return document.querySelector('#status').textContent === 'qr_needed' && img.complete && img.naturalWidth > 0;
  }, { timeout: 10_000, polling: 100 });
  const qr = await page.$eval('#qr', (img) => ({ src: img.src, naturalWidth: img.naturalWidth, shown: !img.closest('[hidden]') }));
  assert.ok(qr.naturalWidth > 0, 'the QR image decoded');
  assert.equal(qr.shown, true);
  assert.equal(qr.src, (await b.call('GET', '/status')).body.qr_code);
  assert.equal(await text(page, '#last_error'), 'phone unlinked');
  // For a person to look at: BRIDGE_PAGE_SCREENSHOT=/tmp/page.png npm test
  if (process.env.BRIDGE_PAGE_SCREENSHOT) await page.screenshot({ path: process.env.BRIDGE_PAGE_SCREENSHOT });

  // A reload remembers the token and goes straight to the status.
  await page.reload({ waitUntil: 'load' });
  await page.waitForFunction(() => document.querySelector('#status').textContent === 'qr_needed', { timeout: 10_000 });
  assert.equal(await visible(page, '#login'), false);

  await b.call('POST', '/simulator/state', { status: 'connected' });
  await page.waitForFunction(() => document.querySelector('#status').textContent === 'connected', { timeout: 10_000 });
  assert.equal(await visible(page, '#qr-box'), false, 'the QR disappears once connected');

  assert.deepEqual(problems.filter((p) => !p.includes('401')), []);
});
