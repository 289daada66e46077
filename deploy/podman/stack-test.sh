#!/usr/bin/env bash
# The deploy test (`make deploy-test`): builds the images from deploy/Dockerfile as they are,
# brings up docker-compose.yml's stack with podman-compose, trains in its trainer and checks
# the stack from outside (deploy/podman/checks.py). Runs deploy/README.md's compose commands,
# with `docker compose` spelled $COMPOSE.
#
# Needs root (rootful podman), Debian's packages and PyPI; no container registry: the base
# images are built locally from Debian packages (base-images.sh). Machine-wide state (podman's
# images and layer cache, the tools' venv) is kept between runs: a rerun builds only what
# changed. The stack is always taken down with its volumes; on a failure the containers' logs
# are printed first.
#
# Environment: DEPLOY_TEST_TIMEOUT_S (whole run, default 2400), LEVI_DEPLOY_STATE (env.sh).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=env.sh
source "$HERE/env.sh"
cd "$ROOT"

started=$SECONDS
deadline=$((SECONDS + ${DEPLOY_TEST_TIMEOUT_S:-2400}))
timings=()
step() { # NAME TIMEOUT_S COMMAND...: runs and times one step (within the run's deadline)
  local name="$1" limit="$2" t0=$SECONDS rc=0
  shift 2
  [ $((deadline - SECONDS)) -lt "$limit" ] && limit=$((deadline - SECONDS))
  [ "$limit" -gt 0 ] || die "$name: the run's ${DEPLOY_TEST_TIMEOUT_S:-2400}s are spent"
  log "== $name: $*"
  timeout --kill-after=30 "$limit" "$@" || rc=$?
  timings+=("$name $((SECONDS - t0))s")
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then die "$name: no result within ${limit}s"; fi
  [ "$rc" = 0 ] || die "$name: exit status $rc"
}

bash "$HERE/setup-host.sh"
step "base images" 1200 bash "$HERE/base-images.sh"
export PATH="$LEVI_DEPLOY_TOOLS/bin:$PATH"
PY="$LEVI_DEPLOY_TOOLS/bin/python"
COMPOSE="${COMPOSE:-podman-compose}"
export COMPOSE CONTAINER_ENGINE=podman

# Host ports that are free now (a developer's `make serve` may hold 8000), a fresh admin token,
# and the smallest training that exercises the whole trainer: one method, one seed, one epoch.
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
LEVI_API_PORT="$(free_port)"
LEVI_PROMETHEUS_PORT="$(free_port)"
LEVI_ADMIN_TOKEN="$("$PY" -c 'import secrets; print(secrets.token_urlsafe(32))')"
export LEVI_API_PORT LEVI_PROMETHEUS_PORT LEVI_ADMIN_TOKEN
TINY_TRAINING="--tiny --methods levi --seeds 0 --lrs 1e-2 --epochs 1 --quiet"
LEVI_DEPLOY_RUN_DIR="$(mktemp -d /tmp/levi-deploy-test.XXXXXX)"
export LEVI_DEPLOY_RUN_DIR
export BATCH_DIR="$ROOT/batch" BATCH_INPUT=deploy-test-input.csv BATCH_OUTPUT=deploy-test-scores.csv
PROFILES=(--profile train --profile batch)

teardown() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ]; then
    log "deploy test FAILED (exit status $rc): the containers and their logs"
    podman ps -a --filter label=com.docker.compose.project=levi \
      --format '{{.Names}}  {{.Status}}  {{.Image}}'
    for c in $(podman ps -a -q --filter label=com.docker.compose.project=levi); do
      echo "----- logs of $(podman inspect -f '{{.Name}}' "$c") (last 80 lines)"
      podman logs --tail 80 "$c" 2>&1
    done
    [ -f "${RETRAIN_LOG:-}" ] && echo "----- the retraining's output" && tail -80 "$RETRAIN_LOG"
  fi
  log "== teardown: $COMPOSE ${PROFILES[*]} down -v"
  timeout 180 $COMPOSE "${PROFILES[@]}" down -v >/dev/null 2>&1 ||
    log "warning: $COMPOSE down did not finish cleanly"
  rm -f "$BATCH_DIR/$BATCH_INPUT" "$BATCH_DIR/$BATCH_OUTPUT"
  rm -rf "$BATCH_DIR/$BATCH_OUTPUT.parts" "$LEVI_DEPLOY_RUN_DIR"
  rmdir "$BATCH_DIR" 2>/dev/null
  log "deploy test timings: $(printf '%s, ' "${timings[@]}")$((SECONDS - started))s in all"
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# A stack left by an interrupted run would hold the volumes and names.
timeout 180 $COMPOSE "${PROFILES[@]}" down -v >/dev/null 2>&1 || true

step "static checks" 120 "$PY" "$HERE/checks.py" static

# --------------------------------------------------------------- build (README: build)
step "build" 1500 $COMPOSE --profile train build
# The build cache: the stages worth keeping get tags (the same cached build, seconds), then
# whatever no tagged image needs any more is dropped, so repeated runs do not fill the disk.
keep_cache() {
  local stage
  for stage in requirements serve-venv train-venv packaged; do
    podman build --quiet --pull=never -f deploy/Dockerfile --target "$stage" \
      -t "localhost/levi-build-cache:$stage" . >/dev/null
  done
  podman image prune -f >/dev/null
}
export -f keep_cache
step "keep the build cache" 600 bash -c keep_cache
serve_size="$(podman image inspect --format '{{.Size}}' levi-serve:local)"
train_size="$(podman image inspect --format '{{.Size}}' levi-train:local)"
log "image sizes: levi-serve:local $((serve_size / 1000000)) MB, levi-train:local $((train_size / 1000000)) MB"
# The serve image holds only what serving needs (deploy/Dockerfile): keep it within 700 MB.
[ "$serve_size" -le 700000000 ] || die "levi-serve:local is $((serve_size / 1000000)) MB, over 700 MB"

# ------------------------------------------------- train, serve (README: the walk-through)
export TRAIN_ARGS="$TINY_TRAINING"
step "train" 900 $COMPOSE --profile train run --rm trainer
step "up" 300 $COMPOSE up -d api redis prometheus
volume_dir() { podman volume inspect --format '{{.Mountpoint}}' "levi_$1"; }
ARTIFACTS_DIR="$(volume_dir artifacts)"
FEEDBACK_DIR="$(volume_dir feedback)"
export ARTIFACTS_DIR FEEDBACK_DIR
step "check the stack" 600 "$PY" "$HERE/checks.py" serve

# ------------------------------ retrain with the logged feedback, reload (README: new model)
export TRAIN_ARGS="$TINY_TRAINING --feedback /feedback"
export RETRAIN_LOG="$LEVI_DEPLOY_RUN_DIR/retrain.log"  # checks.py reads what it learned
step "retrain" 900 $COMPOSE --profile train run --rm trainer >"$RETRAIN_LOG" 2>&1
cat "$RETRAIN_LOG"
step "check the reload" 300 "$PY" "$HERE/checks.py" reload

# ----------------------------------------------------------- batch (README: batch scoring)
mkdir -p "$BATCH_DIR"
printf 'user_id,item_id\n196,242\n1,1\n22,377\n999999,242\n' >"$BATCH_DIR/$BATCH_INPUT"
chmod 0777 "$BATCH_DIR"
step "batch" 600 $COMPOSE --profile batch run --rm batch
step "check the batch scores" 120 "$PY" "$HERE/checks.py" batch

log "deploy test passed"
