#!/bin/sh
# As the official redis image: options alone run redis-server; redis-server runs as user redis
# with protected mode off (the official image builds it so; a container's port is its boundary).
set -e
if [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ]; then
  shift
  set -- redis-server --protected-mode no "$@"
  if [ "$(id -u)" = 0 ]; then exec setpriv --reuid=redis --regid=redis --init-groups "$@"; fi
fi
exec "$@"
