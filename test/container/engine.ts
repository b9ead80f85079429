// The container tests' engine: podman's Docker-compatible service, started (once per machine) by
// podman-service.sh, the same script .ci/run uses, or the engine REVDIAL_TEST_DOCKER_HOST names;
// and the sandbox image, built when missing or out of date (cached by content hash, so a build
// with nothing changed takes about a second). Where there is no engine, `skip` says why.
// Also: removing every container that carries a test's label, for the tests' after() hooks.

import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { LABELS } from "../../src/host/docker-driver.ts";
import { DockerEngine } from "../../src/host/docker-engine.ts";
import { buildImage } from "../../src/host/sandbox-image.ts";

const SERVICE = fileURLToPath(new URL("./podman-service.sh", import.meta.url));
export const TEST_IMAGE = "revdial-sandbox";
/** The label every container a test starts carries (value: that test run's id). */
export const TEST_LABEL = "revdial.test";

export interface TestEngine {
  skip: string | false;
  endpoint: string;
  engine: DockerEngine | null;
}

function hasPodman(): boolean {
  try {
    execFileSync("sh", ["-c", "command -v podman"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** Starts (or finds) the engine and makes sure the sandbox image is up to date. */
export async function testEngine(): Promise<TestEngine> {
  let endpoint = process.env.REVDIAL_TEST_DOCKER_HOST ?? "";
  if (!endpoint) {
    if (!hasPodman())
      return {
        skip: "no container engine: podman is not installed (apt-get install podman runc debootstrap; .ci/run does)",
        endpoint: "",
        engine: null,
      };
    if (process.getuid?.() !== 0)
      return { skip: "the container tests run podman as root", endpoint: "", engine: null };
    try {
      endpoint = execFileSync("bash", [SERVICE], { encoding: "utf8", timeout: 30_000 }).trim();
    } catch (err) {
      return {
        skip: `podman's service did not start: ${(err as Error).message}`,
        endpoint: "",
        engine: null,
      };
    }
  }
  const engine = new DockerEngine(endpoint);
  try {
    await engine.ping();
  } catch (err) {
    return { skip: `no engine answers at ${endpoint}: ${(err as Error).message}`, endpoint, engine: null };
  }
  const image = await buildImage({
    engine,
    tag: TEST_IMAGE,
    progress: (line) => process.stderr.write(`# image: ${line}\n`),
  });
  if (image.built) process.stderr.write(`# image ${image.tag} built for the tests\n`);
  return { skip: false, endpoint, engine };
}

/** Removes every container carrying `labels` (running or not); returns how many there were. */
export async function removeContainers(
  engine: DockerEngine,
  labels: Record<string, string>,
): Promise<number> {
  const left = await engine.listContainers({ [LABELS.managed]: "1", ...labels });
  await Promise.all(left.map((c) => engine.removeContainer(c.Id)));
  return left.length;
}
