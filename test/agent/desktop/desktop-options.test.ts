// Options are validated at construction, naming the wrong option; defaults are frozen.

import assert from "node:assert/strict";
import { test } from "node:test";
import {
  DESKTOP_SERVICE_DEFAULTS,
  resolveDesktopOptions,
} from "../../../src/agent/desktop/desktop-options.ts";
import { createDesktopService } from "../../../src/agent/desktop/desktop-service.ts";

test("defaults: 127.0.0.1:9876, 10 MiB body limit, frozen", () => {
  const options = resolveDesktopOptions({ env: {} });
  assert.equal(options.host, "127.0.0.1");
  assert.equal(options.port, 9876);
  assert.equal(options.bodyLimit, 10 * 1024 * 1024);
  assert.ok(Object.isFrozen(DESKTOP_SERVICE_DEFAULTS));
  assert.ok(Object.isFrozen(options));
});

test("listen accepts host:port, [v6]:port and port 0", () => {
  assert.deepEqual(
    [
      resolveDesktopOptions({ listen: "0.0.0.0:0" }).host,
      resolveDesktopOptions({ listen: "0.0.0.0:0" }).port,
    ],
    ["0.0.0.0", 0],
  );
  assert.equal(resolveDesktopOptions({ listen: "[::1]:9000" }).host, "::1");
});

test("wrong options throw RD_ERR_INVALID_OPTION naming the option", () => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ listen: "9876" }, "listen"],
    [{ listen: "localhost:70000" }, "listen"],
    [{ display: "zero" }, "display"],
    [{ bodyLimit: 0 }, "bodyLimit"],
    [{ bodyLimit: 1.5 }, "bodyLimit"],
    [{ toolTimeoutMs: -1 }, "toolTimeoutMs"],
    [{ maxConcurrentCaptures: 0 }, "maxConcurrentCaptures"],
  ];
  for (const [options, name] of cases) {
    assert.throws(
      () => createDesktopService(options),
      (err: Error & { code?: string }) => err.code === "RD_ERR_INVALID_OPTION" && err.message.includes(name),
      name,
    );
  }
});

test("the display option wins over the environment", () => {
  const service = createDesktopService({ display: ":99", env: { WAYLAND_DISPLAY: "wayland-0" } });
  assert.deepEqual(service.providerNames, { screenshot: "x11", clipboard: "xclip" });
});

test("WAYLAND_DISPLAY picks Wayland, DISPLAY picks X11, neither picks none", () => {
  const names = (env: NodeJS.ProcessEnv) => createDesktopService({ env }).providerNames.screenshot;
  assert.equal(names({ WAYLAND_DISPLAY: "wayland-0", DISPLAY: ":0" }), "wayland");
  assert.equal(names({ DISPLAY: ":0" }), "x11");
  assert.equal(names({}), "none");
});

test("close() is idempotent, before and after listen", async () => {
  const idle = createDesktopService({ env: {} });
  await Promise.all([idle.close(), idle.close()]);
  const service = createDesktopService({ listen: "127.0.0.1:0", env: {} });
  await service.listen();
  await service.close();
  await service.destroy();
  await assert.rejects(service.listen());
});

test("an aborted signal closes the service", async () => {
  const controller = new AbortController();
  const service = createDesktopService({ listen: "127.0.0.1:0", env: {}, signal: controller.signal });
  const { port } = await service.listen();
  controller.abort();
  await service.close();
  await assert.rejects(fetch(`http://127.0.0.1:${port}/health`));
});
