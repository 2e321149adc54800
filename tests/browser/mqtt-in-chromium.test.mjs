// MQTT.js in headless Chromium talks to coremq over ws://, and an MQTT.js client in Node
// talks to the same broker over TCP: each receives what the other publishes.
//
// Run with `npm ci && npm test` in this folder. The test starts its own coremq from
// $COREMQ_BIN, else $CARGO_TARGET_DIR/debug/coremq, else <repo>/target/debug/coremq, and
// Chromium from $CHROMIUM_PATH, else /usr/bin/chromium (Debian package chromium).

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";

const testDir = dirname(fileURLToPath(import.meta.url));
const repoRoot = join(testDir, "..", "..");

// Each wait is bounded so that a broken broker fails the test instead of hanging it.
const BROKER_START_TIMEOUT_MS = 10_000;
const PAGE_TIMEOUT_MS = 15_000;
const MESSAGE_TIMEOUT_MS = 10_000;

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

async function importOrFail(name) {
  try {
    return await import(name);
  } catch (error) {
    throw new Error(`npm package ${name} is missing (${error.message}): run \`npm ci\` in ${testDir}`);
  }
}

function findBroker() {
  const candidates = [];
  if (process.env.COREMQ_BIN) {
    candidates.push(process.env.COREMQ_BIN);
  } else {
    if (process.env.CARGO_TARGET_DIR) {
      candidates.push(join(process.env.CARGO_TARGET_DIR, "debug", "coremq"));
    }
    candidates.push(join(repoRoot, "target", "debug", "coremq"));
  }
  const found = candidates.find((path) => existsSync(path));
  if (!found) {
    throw new Error(
      `coremq binary not found (searched ${candidates.join(", ")}): run \`cargo build -p coremq\` or set COREMQ_BIN`,
    );
  }
  return found;
}

function findChromium() {
  const path = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
  if (!existsSync(path)) {
    throw new Error(`Chromium not found at ${path}: install the Debian package chromium or set CHROMIUM_PATH`);
  }
  return path;
}

/** Starts coremq with a TCP and a WebSocket listener and resolves with their addresses. */
function startBroker(binary) {
  const args = [
    "--listen", "127.0.0.1:0",
    "--listen", "ws://127.0.0.1:0/mqtt",
    "--shards", "2",
    "--storage", "memory",
  ];
  const child = spawn(binary, args, {
    env: { ...process.env, RUST_LOG: "info", NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  const listening = /listening protocol=(\w+) addr="?([0-9.]+):(\d+)"?(?: path="?([^"\s]+))?/g;

  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill();
      reject(new Error(`coremq named no ws listener within ${BROKER_START_TIMEOUT_MS} ms:\n${log}`));
    }, BROKER_START_TIMEOUT_MS);
    const onData = (chunk) => {
      log += chunk.toString();
      const listeners = {};
      for (const match of log.matchAll(listening)) {
        listeners[match[1]] = { host: match[2], port: Number(match[3]), path: match[4] };
      }
      if (listeners.tcp && listeners.ws) {
        clearTimeout(timer);
        resolve({ child, listeners, log: () => log });
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`coremq exited with code ${code} before it listened:\n${log}`));
    });
  });
}

/** Serves the test page and the MQTT.js browser bundle on a free loopback port. */
function startPageServer() {
  const bundle = join(testDir, "node_modules", "mqtt", "dist", "mqtt.min.js");
  if (!existsSync(bundle)) {
    throw new Error(`MQTT.js bundle not found at ${bundle}: run \`npm ci\` in ${testDir}`);
  }
  const files = {
    "/": { type: "text/html", body: readFileSync(join(testDir, "page.html")) },
    "/mqtt.min.js": { type: "text/javascript", body: readFileSync(bundle) },
  };
  const server = createServer((request, response) => {
    const file = files[new URL(request.url, "http://localhost").pathname];
    if (!file) {
      response.writeHead(404).end();
      return;
    }
    response.writeHead(200, { "Content-Type": file.type }).end(file.body);
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

/** Resolves with the first message on topic that client receives, or rejects after a timeout. */
function nextMessage(client, topic) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no message on ${topic} within ${MESSAGE_TIMEOUT_MS} ms`)),
      MESSAGE_TIMEOUT_MS,
    );
    client.on("message", (received, payload) => {
      if (received === topic) {
        clearTimeout(timer);
        resolve(payload.toString());
      }
    });
  });
}

async function connectNodeClient(mqtt, url, clientId, protocolVersion) {
  const client = await mqtt.connectAsync(url, {
    clientId,
    protocolVersion,
    reconnectPeriod: 0,
    connectTimeout: 5000,
  });
  await client.subscribeAsync("browser/out", { qos: 1 });
  return client;
}

test("MQTT.js in Chromium exchanges messages over ws://", { timeout: 120_000 }, async (t) => {
  const mqtt = await importOrFail("mqtt");
  const { chromium } = await importOrFail("playwright-core");
  const broker = await startBroker(findBroker());
  t.after(() => broker.child.kill());
  const pageServer = await startPageServer();
  t.after(() => pageServer.close());
  const userDataDir = mkdtempSync(join(tmpdir(), "coremq-chromium-"));
  t.after(() => rmSync(userDataDir, { recursive: true, force: true }));

  const browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: findChromium(),
    headless: true,
    args: CHROMIUM_ARGS,
  });
  t.after(() => browser.close());

  const { tcp, ws } = broker.listeners;
  const wsUrl = `ws://${ws.host}:${ws.port}${ws.path}`;
  const pagePort = pageServer.address().port;

  // MQTT.js protocolVersion 5 is MQTT 5.0 and 4 is MQTT 3.1.1.
  for (const version of [5, 4]) {
    await t.test(`protocol version ${version}`, async () => {
      const browserId = `browser-v${version}`;
      const nodeClient = await connectNodeClient(
        mqtt, `mqtt://${tcp.host}:${tcp.port}`, `node-v${version}`, version,
      );
      try {
        const fromBrowser = nextMessage(nodeClient, "browser/out");
        const page = await browser.newPage();
        const query = new URLSearchParams({ ws: wsUrl, client: browserId, version: String(version) });
        await page.goto(`http://127.0.0.1:${pagePort}/?${query}`);

        await page.waitForFunction(
          () => window.testState.subscribed || window.testState.errors.length > 0,
          null,
          { timeout: PAGE_TIMEOUT_MS },
        );
        const afterSubscribe = await page.evaluate(() => window.testState);
        assert.deepEqual(afterSubscribe.errors, [], "MQTT.js in the page reported errors");
        assert.equal(afterSubscribe.connected, true);
        assert.deepEqual(afterSubscribe.granted, [1]);
        assert.equal(await fromBrowser, `hello from ${browserId}`);

        await nodeClient.publishAsync("browser/in", "hello browser", { qos: 1 });
        await page.waitForFunction(
          () => window.testState.received.length > 0,
          null,
          { timeout: MESSAGE_TIMEOUT_MS },
        );
        const received = await page.evaluate(() => window.testState.received);
        assert.deepEqual(received, [{ topic: "browser/in", payload: "hello browser" }]);
        await page.close();
      } finally {
        await nodeClient.endAsync();
      }
      assert.match(broker.log(), new RegExp(`connected client_id="?${browserId}"?`));
    });
  }
});
