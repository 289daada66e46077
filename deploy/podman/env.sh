# Sourced by the deploy/podman scripts: where their state lives and how podman is configured.
#
# LEVI_DEPLOY_STATE   machine-wide state (generated containers.conf, the tools' venv); kept
#                     between runs so reruns only check it. Default /var/lib/levi-deploy.
# COMPOSE             the compose command the stack test runs (default: podman-compose from the
#                     tools' venv).

LEVI_DEPLOY_STATE="${LEVI_DEPLOY_STATE:-/var/lib/levi-deploy}"
LEVI_DEPLOY_TOOLS="$LEVI_DEPLOY_STATE/tools"
export CONTAINERS_CONF="$LEVI_DEPLOY_STATE/containers.conf"
# OCI images drop HEALTHCHECK; the docker format keeps it (`podman build`, podman-compose build).
export BUILDAH_FORMAT=docker

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}
