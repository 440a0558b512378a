// What the browser tests share: waiting for a condition, free ports, and
// Debian's Chromium started the way this machine needs it.
import { createServer } from 'node:http';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const DEADLINE = 30_000;

/** Waits until `check()` resolves truthy; fails after the deadline. */
export async function until(what, check, deadline = DEADLINE) {
  const end = Date.now() + deadline;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve) => {
    const server = createServer().listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Headless Chromium with a fresh profile in `profileDir`, without the
 * background traffic this machine's closed network refuses. */
export function launch(profileDir, options = {}) {
  return chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
    ],
    ...options,
  });
}
