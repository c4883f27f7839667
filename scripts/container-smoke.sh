#!/usr/bin/env bash
# Smoke test of the real image, for a machine with a Docker engine (CI has none: there,
# tests/deploy/test_image.py does the same steps without Docker).
#
#   scripts/container-smoke.sh [image-tag]
#
# Builds the image, runs it the way production should (read-only root, tmpfs /tmp, no
# capabilities, a named volume on /data), waits for the HEALTHCHECK to report healthy, posts one
# event and reads it back from a file sink, then `docker stop`s it and checks it exited 0 well
# within the stop timeout. Cleans up its container and volume.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-s3-notify-relay:smoke}
name=relay-smoke-$$
volume=relay-smoke-$$
token=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
port=${SMOKE_PORT:-18080}

cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  docker volume rm "$volume" >/dev/null 2>&1 || true
}
trap cleanup EXIT

docker build -t "$image" .
docker volume create "$volume" >/dev/null
docker run -d --name "$name" \
  --read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges:true \
  --stop-timeout 30 -p "127.0.0.1:$port:8080" -v "$volume:/data" \
  -e RELAY_AUTH_TOKENS="$token" \
  -e RUSTFS_NOTIFY_FILE_ENABLE_SMOKE=on -e RUSTFS_NOTIFY_FILE_PATH_SMOKE=/data/events.ndjson \
  "$image" >/dev/null

[ "$(docker inspect -f '{{.Config.User}}' "$name")" = "10001:10001" ] || { echo "image does not run as 10001:10001" >&2; exit 1; }

status=starting
for _ in $(seq 1 60); do
  status=$(docker inspect -f '{{.State.Health.Status}}' "$name")
  [ "$status" = healthy ] && break
  [ "$(docker inspect -f '{{.State.Running}}' "$name")" = true ] || break
  sleep 1
done
if [ "$status" != healthy ]; then
  echo "container is $status, not healthy" >&2
  docker logs "$name" >&2
  exit 1
fi

body='{"EventName":"s3:ObjectCreated:Put","Key":"photos/smoke.jpg","Records":[{"eventVersion":"2.0","eventSource":"minio:s3","eventName":"s3:ObjectCreated:Put","eventTime":"2026-03-04T10:11:12.345Z","responseElements":{"x-amz-request-id":"SMOKE0001"},"s3":{"bucket":{"name":"photos"},"object":{"key":"smoke.jpg","size":1,"sequencer":"0000000000000001"}}}]}'
answer=$(curl -fsS -XPOST "http://127.0.0.1:$port/minio" -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/json' -d "$body")
echo "$answer" | grep -Eq '"accepted": ?1' || { echo "unexpected answer: $answer" >&2; exit 1; }

for _ in $(seq 1 30); do
  docker exec "$name" sh -c 'grep -q photos/smoke.jpg /data/events.ndjson 2>/dev/null' && break
  sleep 1
done
docker exec "$name" grep -q photos/smoke.jpg /data/events.ndjson || { echo "event not delivered" >&2; exit 1; }
docker exec "$name" relay queue stats

started=$(date +%s)
docker stop "$name" >/dev/null
took=$(( $(date +%s) - started ))
code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
docker logs "$name" 2>&1 | tail -3
if [ "$code" != 0 ] || [ "$took" -gt 12 ]; then
  echo "exit code $code after ${took}s (want 0 within RELAY_SHUTDOWN_TIMEOUT)" >&2
  exit 1
fi
echo "container smoke test passed: healthy, event delivered, stopped with 0 in ${took}s"
