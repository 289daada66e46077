#!/usr/bin/env bash
# Local stand-ins for the base images that deploy/Dockerfile and docker-compose.yml name
# (python:3.11-slim, redis:..., prom/prometheus:...), for a machine that reaches Debian's
# packages but no container registry. Built from a debootstrap'd Debian bookworm with Debian's
# python3, redis-server and prometheus, and tagged with the very names the files use, so the
# files stay exactly what a Docker user runs.
#
# Cached: an image whose label matches this script's and base/'s content is kept; `--force`
# rebuilds. The Debian root trusts this machine's local CA certificates (a TLS proxy in front of
# the package indexes needs that) and uses this machine's Debian mirror settings.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"

force=0
[ "${1:-}" = --force ] && force=1
MIRROR="${LEVI_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${LEVI_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SUITE=bookworm
DEBIAN_BASE=localhost/levi-debian:$SUITE
LABEL=levi-serve.stand-in
fingerprint="$(cat "$HERE/base-images.sh" "$HERE"/base/* | sha256sum | cut -c1-16)"

# The names as the files spell them, and as podman stores them (docker.io/library/...).
qualify() {
  local name="$1" first="${1%%/*}"
  if [[ "$name" != */* ]]; then
    echo "docker.io/library/$name"
  elif [[ "$first" != *.* && "$first" != *:* && "$first" != localhost ]]; then
    echo "docker.io/$name"
  else
    echo "$name"
  fi
}
python_image="$(sed -n 's/^ARG PYTHON_IMAGE=//p' "$ROOT/deploy/Dockerfile")"
read -r redis_image prometheus_image < <(
  "$LEVI_DEPLOY_TOOLS/bin/python" -c '
import sys, yaml
services = yaml.safe_load(open(sys.argv[1]))["services"]
print(services["redis"]["image"], services["prometheus"]["image"])' "$ROOT/docker-compose.yml"
)
[ -n "$python_image" ] && [ -n "$redis_image" ] && [ -n "$prometheus_image" ] ||
  die "could not read the base image names from deploy/Dockerfile and docker-compose.yml"

up_to_date() {
  [ "$force" = 0 ] &&
    [ "$(podman image inspect --format "{{ index .Labels \"$LABEL\" }}" "$1" 2>/dev/null)" = "$fingerprint" ]
}

# ------------------------------------------------------------------ Debian root
build_debian_base() {
  local rootfs
  rootfs="$(mktemp -d /var/tmp/levi-debian.XXXXXX)"
  trap 'rm -rf "$rootfs"' RETURN
  log "debootstrap $SUITE from $MIRROR (a few minutes)"
  debootstrap --variant=minbase --include=ca-certificates "$SUITE" "$rootfs" "$MIRROR" \
    >"$rootfs.log" 2>&1 || {
    tail -30 "$rootfs.log" >&2
    die "debootstrap failed"
  }
  rm -f "$rootfs.log"
  # This machine's local CAs (e.g. a TLS proxy's), so apt and pip in the images reach out.
  if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
    cp -r /usr/local/share/ca-certificates/. "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null
  fi
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  # As Debian's own container images: no caches, docs, man pages or translations kept.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
Acquire::GzipIndexes "true";
APT::Install-Recommends "false";
EOF
  # A mirror serving a fixed snapshot has expired Release files: follow this machine's choice.
  if apt-config dump | grep -qi '^Acquire::Check-Valid-Until "false"'; then
    echo 'Acquire::Check-Valid-Until "false";' >"$rootfs/etc/apt/apt.conf.d/90valid-until"
  fi
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/excludes" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,info}/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  tar -C "$rootfs" --numeric-owner -c . |
    podman import --change 'CMD ["bash"]' --change "LABEL $LABEL=$fingerprint" - "$DEBIAN_BASE" >/dev/null
}

stand_in() { # NAME CONTAINERFILE
  log "building $1 (stand-in: $2)"
  podman build --quiet --pull=never --build-arg "DEBIAN_BASE=$DEBIAN_BASE" \
    --label "$LABEL=$fingerprint" -f "$HERE/base/$2" -t "$1" "$HERE/base" >/dev/null
}

images=("$(qualify "$python_image")" "$(qualify "$redis_image")" "$(qualify "$prometheus_image")")
files=(python.Containerfile redis.Containerfile prometheus.Containerfile)
todo=0
for i in "${!images[@]}"; do up_to_date "${images[$i]}" || todo=1; done
if [ "$todo" = 0 ]; then
  log "base images up to date: ${images[*]}"
  exit 0
fi
start=$SECONDS
up_to_date "$DEBIAN_BASE" || build_debian_base
for i in "${!images[@]}"; do
  up_to_date "${images[$i]}" || stand_in "${images[$i]}" "${files[$i]}"
done
log "base images built in $((SECONDS - start)) s: ${images[*]}"
