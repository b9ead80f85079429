// `revdial image build [--tag revdial-sandbox] [--from IMAGE] [--docker-host URL] [--force]`: the
// docker driver's sandbox image, built through the engine's API from a local base
// (src/host/sandbox-image.ts); progress on stderr, the image, its size and the time on stdout.
// `--save-context DIR` writes the build context of the repo's Containerfile instead, for operators
// who build the image with their own tools.

import type { Command } from "commander";
import { DockerEngine } from "../../host/docker-engine.ts";
import { buildImage, DEFAULT_IMAGE, formatSize, saveContext } from "../../host/sandbox-image.ts";
import { env } from "../env.ts";
import { print } from "../output.ts";

interface BuildFlags {
  tag: string;
  from?: string;
  dockerHost?: string;
  force?: boolean;
  saveContext?: string;
}

async function build(flags: BuildFlags): Promise<void> {
  if (flags.saveContext) {
    const n = saveContext(flags.saveContext);
    print(
      `build context written to ${flags.saveContext} (${n} files); build it with the repo's Containerfile\n`,
    );
    return;
  }
  const engine = new DockerEngine(flags.dockerHost || undefined);
  try {
    await engine.ping();
  } catch (err) {
    throw new Error(
      `no container engine reachable at ${engine.endpoint} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message}); ` +
        "start Docker, or podman's service (podman system service unix:///PATH), and give --docker-host or DOCKER_HOST",
    );
  }
  const started = Date.now();
  const image = await buildImage({
    engine,
    tag: flags.tag,
    from: flags.from ?? null,
    force: flags.force,
    progress: (line) => process.stderr.write(`${line}\n`),
  });
  const seconds = ((Date.now() - started) / 1000).toFixed(1);
  print(
    `image ${image.tag} ${image.built ? "built" : "up to date"}: ${image.id.replace(/^sha256:/, "").slice(0, 12)}, ` +
      `${formatSize(image.size)}, from ${image.base}, in ${seconds} s\n`,
  );
}

export function register(program: Command): void {
  const image = program.command("image").description("the docker driver's sandbox image");
  image
    .command("build")
    .description("build the sandbox image (Xvfb, xterm, Node and the agent) from a local base, no registry")
    .option("--tag <name>", "image name", DEFAULT_IMAGE)
    .option("--from <image>", "base image already in the engine (Debian bookworm); default: debootstrap one")
    .option(
      "--docker-host <url>",
      "engine socket (env DOCKER_HOST, default unix:///var/run/docker.sock)",
      env("DOCKER_HOST"),
    )
    .option("--force", "rebuild even when the image is up to date")
    .option("--save-context <dir>", "write the build context to DIR instead of building")
    .action((flags: BuildFlags) => build(flags));
}
