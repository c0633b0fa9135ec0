// Finds and kills the Chromium processes that use one profile directory, the
// last resort against orphan browsers when client.destroy() could not do it.
import { readdirSync, readFileSync } from 'node:fs';

/** @returns {number[]} pids whose command line names `userDataDir` (Linux /proc only). */
export function findBrowserPids(userDataDir) {
  const needle = `--user-data-dir=${userDataDir}`;
  let entries;
  try {
    entries = readdirSync('/proc');
  } catch {
    return []; // not Linux: rely on client.destroy() alone
  }
  const pids = [];
  for (const entry of entries) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const args = readFileSync(`/proc/${entry}/cmdline`, 'utf8').split('\0');
      if (args.includes(needle)) pids.push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  return pids;
}

/** SIGKILL every process using `userDataDir`; returns how many were signalled. */
export function killBrowserProcesses(userDataDir) {
  const pids = findBrowserPids(userDataDir);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  return pids.length;
}
