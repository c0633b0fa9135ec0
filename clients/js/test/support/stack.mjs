// The real stack for this package's tests, started the way a developer runs it: a freshly migrated
// database (DATABASE_URL's server, else the embedded PostgreSQL: scripts/database.py), the simulator
// bridge (`node bridge/src/main.js`, WHATSAPP_DRIVER=simulator), the API (`whatsched api`) and one
// worker (`whatsched worker`), careful sending off. Every process logs to a file the failures show.
import { spawn, spawnSync } from "node:child_process";
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const PACKAGE = resolve(here, "../..");
export const REPO = resolve(PACKAGE, "../..");
const VENV_BIN = process.env.WHATSCHED_VENV_BIN || join(REPO, ".venv/bin");
const PYTHON = join(VENV_BIN, "python");
const WHATSCHED = join(VENV_BIN, "whatsched");
const BRIDGE_TOKEN = "js-client-test-bridge-token";

// Careful sending off, and one delivery at a time so a slow bridge makes a campaign last.
const SENDING = {
  SEND_SPACING_MIN_S: "0",
  SEND_SPACING_MAX_S: "0",
  SEND_HOURLY_CAP: "0",
  SEND_DAILY_CAP: "0",
  QUIET_HOURS: "",
  DISPATCH_BATCH_SIZE: "1",
  DISPATCH_LANES: "1",
};

export function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

export const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

/** Poll `probe` until it returns a truthy value; that value, or an error naming `what`. */
export async function eventually(probe, { within = 30_000, every = 100, what = "the condition" } = {}) {
  const deadline = Date.now() + within;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${within} ms waiting for ${what}; last: ${last}`);
    await sleep(every);
  }
}

/** The environment of a child: ours, less what would point it elsewhere. */
function baseEnv() {
  const env = { ...process.env };
  for (const name of Object.keys(env)) {
    if (/^(API_|WS_|DISPATCH_|SEND_|DATABASE_URL|APP_DATABASE_URL|SUPABASE_|AUTH_PROVIDER|JWT_|BRIDGE_|SIMULATOR_|PUBLIC_URL|ALLOWED_ORIGINS|REDIS_URL)/.test(name)) {
      delete env[name];
    }
  }
  return env;
}

class Child {
  constructor(name, command, args, { env, cwd, logDir }) {
    this.name = name;
    this.command = command;
    this.args = args;
    this.env = env;
    this.cwd = cwd;
    this.logPath = join(logDir, `${name}.log`);
    this.process = null;
  }

  start() {
    const log = createWriteStream(this.logPath, { flags: "a" });
    this.process = spawn(this.command, this.args, { env: this.env, cwd: this.cwd, stdio: ["ignore", "pipe", "pipe"] });
    this.process.stdout.pipe(log, { end: false });
    this.process.stderr.pipe(log, { end: false });
    this.exited = new Promise((done) => this.process.once("exit", (code, signal) => done({ code, signal })));
    return this;
  }

  get running() {
    return this.process !== null && this.process.exitCode === null && this.process.signalCode === null;
  }

  async stop(timeoutMs = 15_000) {
    if (!this.running) return;
    this.process.kill("SIGTERM");
    const timer = setTimeout(() => this.process.kill("SIGKILL"), timeoutMs);
    await this.exited;
    clearTimeout(timer);
  }

  log(lines = 60) {
    try {
      return readFileSync(this.logPath, "utf8").split("\n").slice(-lines).join("\n");
    } catch {
      return "(no log)";
    }
  }
}

/** A freshly migrated database for as long as the stack lives. */
async function startDatabase(logDir) {
  const env = baseEnv();
  if (process.env.DATABASE_URL) env.DATABASE_URL = process.env.DATABASE_URL;
  const child = spawn(PYTHON, [join(PACKAGE, "scripts/database.py")], {
    env,
    cwd: tmpdir(),
    stdio: ["pipe", "pipe", "pipe"],
  });
  const log = createWriteStream(join(logDir, "database.log"));
  child.stderr.pipe(log);
  const line = await new Promise((done) => {
    createInterface({ input: child.stdout }).once("line", done);
    child.once("exit", () => done(null));
  });
  if (!line) throw new Error(`could not prepare a database: see ${join(logDir, "database.log")}`);
  const exited = new Promise((done) => child.once("exit", done));
  return {
    ...JSON.parse(line),
    async stop() {
      child.stdin.end();
      await exited;
    },
  };
}

/**
 * Start everything. `allowedOrigins`: the API's ALLOWED_ORIGINS (default: the guide's frontend,
 * http://localhost:3000). `latencyMs`: the simulator's time per send.
 */
export async function startStack({ allowedOrigins = "http://localhost:3000", latencyMs = 250 } = {}) {
  const logDir = mkdtempSync(join(tmpdir(), "whatsched-js-stack-"));
  const children = [];
  const stack = { logDir, children };
  try {
    const database = await startDatabase(logDir);
    stack.database = database;
    const [apiPort, bridgePort] = [await freePort(), await freePort()];
    stack.apiUrl = `http://127.0.0.1:${apiPort}`;
    stack.bridgeUrl = `http://127.0.0.1:${bridgePort}`;
    const common = {
      ...baseEnv(),
      ...SENDING,
      DATABASE_URL: database.url,
      DATA_DIR: database.data_dir,
      BRIDGE_URL: stack.bridgeUrl,
      BRIDGE_TOKEN,
      PYTHONUNBUFFERED: "1",
      WEBHOOK_ALLOW_PRIVATE: "true", // the tests' webhook receivers listen on loopback
    };
    const bridge = new Child("bridge", process.execPath, [join(REPO, "bridge/src/main.js")], {
      cwd: join(REPO, "bridge"),
      logDir,
      env: {
        ...baseEnv(),
        WHATSAPP_DRIVER: "simulator",
        BRIDGE_HOST: "127.0.0.1",
        BRIDGE_PORT: String(bridgePort),
        BRIDGE_TOKEN,
        BRIDGE_DATA_DIR: join(logDir, "bridge-data"),
        BRIDGE_EVENTS_URL: `${stack.apiUrl}/api/bridge/events`,
        SIMULATOR_LATENCY_MS: String(latencyMs),
        SIMULATOR_ACK_DELAY_MS: "50",
      },
    });
    const api = new Child("api", WHATSCHED, ["api"], {
      cwd: logDir, // no stray .env
      logDir,
      env: { ...common, API_HOST: "127.0.0.1", API_PORT: String(apiPort), ALLOWED_ORIGINS: allowedOrigins },
    });
    const worker = new Child("worker", WHATSCHED, ["worker"], { cwd: logDir, logDir, env: common });
    Object.assign(stack, { bridge, api, worker });
    children.push(bridge, api, worker);
    bridge.start();
    api.start();
    worker.start();
    await waitHealthy(stack);
    return Object.assign(stack, {
      createUser: (email, password) => createUser(common, logDir, email, password),
      restartApi: () => restartApi(stack),
      simulator: (body) => simulatorConfig(stack, body),
      stop: () => stopStack(stack),
      logs: () => children.map((c) => `--- ${c.name} (${c.logPath})\n${c.log()}`).join("\n"),
    });
  } catch (error) {
    await stopStack(stack);
    throw error;
  }
}

async function waitHealthy(stack) {
  for (const child of stack.children) {
    if (!child.running) throw new Error(`${child.name} exited at start:\n${child.log()}`);
  }
  await eventually(
    async () => {
      const answer = await fetch(`${stack.bridgeUrl}/health`);
      return answer.ok && (await answer.text()).includes('"connected"');
    },
    { what: `the bridge at ${stack.bridgeUrl}`, within: 30_000 },
  );
  await waitApi(stack);
}

async function waitApi(stack) {
  await eventually(
    async () => {
      if (!stack.api.running) throw new Error(`the API exited:\n${stack.api.log()}`);
      const answer = await fetch(`${stack.apiUrl}/api/health`);
      const body = await answer.json();
      return body?.components?.whatsapp?.status === "connected";
    },
    { what: `the API at ${stack.apiUrl}`, within: 60_000 },
  );
}

async function restartApi(stack) {
  await stack.api.stop();
  stack.api.start();
  await waitApi(stack);
}

async function simulatorConfig(stack, body) {
  const answer = await fetch(`${stack.bridgeUrl}/simulator/config`, {
    method: "POST",
    headers: { authorization: `Bearer ${BRIDGE_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  if (!answer.ok) throw new Error(`simulator config: ${answer.status} ${await answer.text()}`);
  return answer.json();
}

/** `whatsched users create EMAIL --password P`, as the README says. */
function createUser(env, cwd, email, password) {
  const run = spawnSync(WHATSCHED, ["users", "create", email, "--password", password], {
    env,
    cwd,
    encoding: "utf8",
  });
  if (run.status !== 0) throw new Error(`whatsched users create failed:\n${run.stdout}\n${run.stderr}`);
  return run.stdout.trim();
}

async function stopStack(stack) {
  for (const child of [...stack.children].reverse()) await child.stop().catch(() => undefined);
  if (stack.database) await stack.database.stop().catch(() => undefined);
  if (!process.env.KEEP_LOGS) rmSync(stack.logDir, { recursive: true, force: true });
}

/** E.164 numbers the simulator delivers to (none ends in 0000), distinct per series. */
export function phones(count, series) {
  const stamp = String(Date.now() % 1_000_000).padStart(6, "0");
  return Array.from({ length: count }, (_, i) => `+569${stamp.slice(-3)}${String(series).padStart(2, "0")}${String(i).padStart(2, "0")}1`);
}
