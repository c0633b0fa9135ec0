// puppeteer (a dependency of whatsapp-web.js) must not download its own browser on
// `npm ci`: the bridge always runs the system Chromium (CHROME_PATH), and there is no
// network for it here. Same effect as PUPPETEER_SKIP_DOWNLOAD=1, without the variable.
module.exports = { skipDownload: true };
