// Ends the bridge with its supervisor. `whatsched dev` starts the bridge with its own pid in
// WHATSCHED_SUPERVISOR_PID; once our parent is another process (we were re-parented because
// the supervisor died, even by SIGKILL), the bridge stops as on SIGTERM, closing its Chromium.
// On Linux the supervisor also has the kernel send us SIGTERM (PR_SET_PDEATHSIG, set before
// node is exec'd); this watch is the portable half and the safety net.
export const SUPERVISOR_ENV = 'WHATSCHED_SUPERVISOR_PID';

/** The supervisor's pid from the environment, or null when the bridge runs on its own. */
export function supervisorPid(env = process.env) {
  const raw = env[SUPERVISOR_ENV];
  if (!raw || !/^\d+$/.test(raw)) return null;
  const pid = Number(raw);
  return pid > 0 ? pid : null;
}

/**
 * Call `onGone` once, as soon as our parent is no longer `expected` (checked now, then every
 * `intervalMs`). The timer never keeps the process alive. Returns a function that stops watching.
 * @param {object} opts
 * @param {number|null} opts.expected the supervisor's pid; null: nothing to watch
 * @param {() => void} opts.onGone
 * @param {number} [opts.intervalMs]
 * @param {() => number} [opts.getPpid] process.ppid is read afresh each time
 */
export function watchParent({ expected, onGone, intervalMs = 500, getPpid = () => process.ppid }) {
  if (!expected) return () => {};
  let timer = null;
  const check = () => {
    if (getPpid() === expected) return;
    clearInterval(timer);
    onGone();
  };
  timer = setInterval(check, intervalMs);
  timer.unref();
  check();
  return () => clearInterval(timer);
}
