// The operator page served at GET /: one self-contained HTML document that asks
// for the bridge token once, keeps it in the `bridge_token` cookie (SameSite=Strict),
// and polls GET /status every 2 s to show the connection and the QR to scan.
export const OPERATOR_PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>whatsched bridge</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; max-width: 34rem; margin: 2rem auto; padding: 0 1rem; color: #1b1b1b; }
  h1 { font-size: 1.3rem; }
  dl { display: grid; grid-template-columns: 8rem 1fr; gap: .3rem 1rem; }
  dt { color: #666; }
  dd { margin: 0; word-break: break-word; }
  .status { font-weight: 600; }
  .connected { color: #0a7d32; } .qr_needed { color: #a56300; } .disconnected { color: #b00020; } .initializing { color: #555; }
  #qr { display: block; margin: 1rem 0; width: 264px; height: 264px; image-rendering: pixelated; }
  .error { color: #b00020; }
  [hidden] { display: none !important; }
</style>
</head>
<body>
<h1>whatsched · WhatsApp bridge</h1>

<form id="login" hidden>
  <p>Enter the bridge token (BRIDGE_TOKEN) to see the WhatsApp connection.</p>
  <input id="token" type="password" autocomplete="off" required size="32" aria-label="bridge token">
  <button id="save" type="submit">Show status</button>
  <p id="login-error" class="error" hidden></p>
</form>

<section id="panel" hidden>
  <dl>
    <dt>Status</dt><dd id="status" class="status">…</dd>
    <dt>Phone</dt><dd id="phone">–</dd>
    <dt>Since</dt><dd id="since">–</dd>
    <dt>Last error</dt><dd id="last_error">–</dd>
  </dl>
  <div id="qr-box" hidden>
    <p>Open WhatsApp on the phone → Linked devices → Link a device, and scan:</p>
    <img id="qr" alt="WhatsApp QR code">
  </div>
  <p id="poll-error" class="error" hidden></p>
  <button id="forget" type="button">Forget token</button>
</section>

<script>
(() => {
  const COOKIE = 'bridge_token';
  const $ = (id) => document.getElementById(id);
  let timer = null;

  const readToken = () => {
    const found = document.cookie.split('; ').find((c) => c.startsWith(COOKIE + '='));
    return found ? decodeURIComponent(found.slice(COOKIE.length + 1)) : '';
  };
  // Not HttpOnly because this script sets it; SameSite=Strict keeps other sites from using it.
  const writeToken = (token, maxAge) => {
    document.cookie = COOKIE + '=' + encodeURIComponent(token) + '; Path=/; SameSite=Strict; Max-Age=' + maxAge;
  };

  const showLogin = (message) => {
    clearTimeout(timer);
    $('panel').hidden = true;
    $('login').hidden = false;
    $('login-error').hidden = !message;
    $('login-error').textContent = message || '';
    $('token').focus();
  };

  const render = (s) => {
    $('status').textContent = s.status;
    $('status').className = 'status ' + s.status;
    $('phone').textContent = s.phone || '–';
    $('since').textContent = s.since ? new Date(s.since).toLocaleString() + ' (' + s.since + ')' : '–';
    $('last_error').textContent = s.last_error || '–';
    const showQr = s.status === 'qr_needed' && typeof s.qr_code === 'string' && s.qr_code.startsWith('data:image/png;base64,');
    $('qr-box').hidden = !showQr;
    if (showQr && $('qr').getAttribute('src') !== s.qr_code) $('qr').src = s.qr_code;
  };

  const poll = async () => {
    try {
      // The cookie carries the token; GET /status accepts it there.
      const res = await fetch('/status', { credentials: 'same-origin', cache: 'no-store' });
      if (res.status === 401) {
        writeToken('', 0);
        return showLogin('That token was not accepted.');
      }
      if (!res.ok) throw new Error('HTTP ' + res.status);
      render(await res.json());
      $('poll-error').hidden = true;
    } catch (err) {
      $('poll-error').hidden = false;
      $('poll-error').textContent = 'Bridge unreachable: ' + err.message;
    }
    timer = setTimeout(poll, 2000);
  };

  const showPanel = () => {
    $('login').hidden = true;
    $('panel').hidden = false;
    clearTimeout(timer);
    poll();
  };

  $('login').addEventListener('submit', (e) => {
    e.preventDefault();
    writeToken($('token').value.trim(), 60 * 60 * 24 * 30);
    $('token').value = '';
    showPanel();
  });
  $('forget').addEventListener('click', () => {
    writeToken('', 0);
    showLogin('');
  });

  if (readToken()) showPanel();
  else showLogin('');
})();
</script>
</body>
</html>
`;
