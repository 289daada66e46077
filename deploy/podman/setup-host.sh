#!/usr/bin/env bash
# Prepares this machine for the deploy test: Debian's podman (rootful) and what it needs, a
# containers.conf that fits the machine, and a venv with podman-compose and the schema checkers.
# Idempotent: a second run installs nothing and rewrites nothing that is up to date.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"

[ "$(id -u)" = 0 ] || die "the deploy test runs rootful podman: run it as root"
mkdir -p "$LEVI_DEPLOY_STATE"

# ------------------------------------------------------------------ Debian packages
# podman + runc (see containers.conf below), netavark + aardvark-dns (compose services reach
# each other by name), iptables (netavark's NAT), debootstrap (the local base images).
packages=(podman runc netavark aardvark-dns iptables debootstrap ca-certificates curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ------------------------------------------------------------------ containers.conf
# runc: crun refuses some VMs' cgroup layout (v1 controllers beside a v2 mount), runc runs on
# both. cgroupfs and file events: no systemd needed. Container ulimits default to values above
# many machines' hard limits (the container then fails to start): cap them at this machine's,
# and nproc at pid_max as well (some VMs refuse a container more, whatever the hard limit).
hard_limit() {
  local v
  v="$(ulimit -H "$1")"
  if [ "$v" = unlimited ] || [ "$v" -gt "$2" ]; then v="$2"; fi
  echo "$v"
}
nofile="$(hard_limit -n 1048576)"
nproc="$(hard_limit -u "$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)")"
conf="$(
  cat <<EOF
# Written by deploy/podman/setup-host.sh; used through CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
EOF
)"
if [ ! -f "$CONTAINERS_CONF" ] || [ "$(cat "$CONTAINERS_CONF")" != "$conf" ]; then
  printf '%s\n' "$conf" >"$CONTAINERS_CONF"
  log "wrote $CONTAINERS_CONF (nofile $nofile, nproc $nproc)"
fi

# ------------------------------------------------------------------ tools venv
# Keyed by the requirements file, so an edit of it builds a fresh venv.
req="$HERE/requirements.txt"
stamp="$LEVI_DEPLOY_TOOLS/.requirements"
if [ ! -f "$stamp" ] || ! cmp -s "$req" "$stamp"; then
  log "creating the tools venv in $LEVI_DEPLOY_TOOLS"
  rm -rf "$LEVI_DEPLOY_TOOLS"
  python3 -m venv "$LEVI_DEPLOY_TOOLS"
  # (grep: this machine's pip configuration may name local indexes that a machine lacks)
  "$LEVI_DEPLOY_TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
  cp "$req" "$stamp"
fi

podman --version >&2
"$LEVI_DEPLOY_TOOLS/bin/podman-compose" --version 2>/dev/null | head -1 >&2
