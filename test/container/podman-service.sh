#!/usr/bin/env bash
# Starts podman's Docker-compatible API on a socket of its own, once per machine (idempotent): what
# the container tests and .ci/run use as DOCKER_HOST. Prints that DOCKER_HOST (unix://…) on stdout.
#
# Two settings this needs on hosts with hybrid cgroups where root lacks CAP_SYS_RESOURCE: the runc
# runtime (crun refuses hybrid cgroups) and explicit ulimits. Both go in a containers.conf of its
# own, named by CONTAINERS_CONF for the service alone. Images and containers live in podman's usual
# storage, so a sandbox image built once stays cached between runs.
#
# Env: REVDIAL_PODMAN_DIR (default /tmp/revdial-podman): the socket, the conf and the service's log.
set -euo pipefail
dir="${REVDIAL_PODMAN_DIR:-/tmp/revdial-podman}"
sock="$dir/podman.sock"
conf="$dir/containers.conf"
command -v podman >/dev/null || { echo "podman is not installed (apt-get install podman runc)" >&2; exit 2; }
mkdir -p "$dir"
chmod 700 "$dir"

ping() { curl -fsS --max-time 2 --unix-socket "$sock" http://d/_ping >/dev/null 2>&1; }
if ping; then echo "unix://$sock"; exit 0; fi

cat >"$conf.tmp" <<'CONF'
[containers]
default_ulimits = [
  "nofile=20000:20000",
  "nproc=32768:32768",
]

[engine]
runtime = "runc"
CONF
mv "$conf.tmp" "$conf"
rm -f "$sock"
# Its own session, so it outlives the shell that started it; --time=0: never exits on idle. It runs
# from /: its containers' conmon inherits its working directory, and one that is later deleted (a
# checkout removed) makes every container start fail ("Failed to get working directory").
cd /
CONTAINERS_CONF="$conf" setsid nohup podman system service --time=0 "unix://$sock" \
  >>"$dir/service.log" 2>&1 </dev/null &
echo $! >"$dir/service.pid"
for _ in $(seq 1 100); do
  if ping; then echo "unix://$sock"; exit 0; fi
  sleep 0.1
done
echo "podman system service did not answer on $sock within 10 s; see $dir/service.log" >&2
tail -5 "$dir/service.log" >&2 || true
exit 1
