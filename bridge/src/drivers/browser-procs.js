// Finds the Chromium processes that use one profile directory (and kills them, the last
// resort against orphan browsers when client.destroy() could not), and measures their memory.
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

/** Resident memory of one process in bytes (VmRSS of /proc/<pid>/status), 0 when unknown or gone. */
export function processRssBytes(pid) {
  try {
    const match = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** Every live descendant of `rootPid` (children, their children...), from /proc/<pid>/stat's ppid. */
export function descendantPids(rootPid) {
  let entries;
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  const children = new Map(); // ppid -> [pid]
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so read after the last ")".
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (!children.has(ppid)) children.set(ppid, []);
      children.get(ppid).push(Number(entry));
    } catch {
      // the process ended while we looked
    }
  }
  const out = [];
  const queue = [rootPid];
  while (queue.length) {
    for (const child of children.get(queue.shift()) ?? []) {
      out.push(child);
      queue.push(child);
    }
  }
  return out;
}

/**
 * The resident memory of this process plus its browser: its descendants (Chromium and its
 * helpers) and any process still using `userDataDir` (a browser re-parented away from us).
 * A sum of RSS counts pages shared between Chromium's processes more than once, so it is an
 * upper bound, which is what a memory cap wants.
 * @param {string|null} [userDataDir]
 */
export function treeRssBytes(userDataDir = null) {
  const pids = new Set([process.pid, ...descendantPids(process.pid)]);
  if (userDataDir) for (const pid of findBrowserPids(userDataDir)) pids.add(pid);
  let total = 0;
  for (const pid of pids) total += processRssBytes(pid);
  return total;
}
