// e2e_util.mjs: what the browser tests share: a free loopback port, a sleep and a polling wait.
import {createServer} from 'node:net';

export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const {port} = s.address();
      s.close(() => res(port));
    });
    s.on('error', rej);
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Polls fn (every 100 ms) until it returns a truthy value, which is returned; throws after
// timeoutMs naming what it waited for (and the last error fn threw).
export async function waitFor(fn, what, timeoutMs = 15000) {
  const end = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${last ? ` (${last.message})` : ''}`);
    await sleep(100);
  }
}
