#!/usr/bin/env bash
# The container image, end to end (make image-test):
#   podman set-up (deploy/podman-setup.sh) -> wheels with `pip download` -> podman build -> run with a fresh volume
#   -> healthy -> `newkey` in the container -> the real agent on this host sends samples to the published port
#   -> podman stop (SIGTERM: exit 0, clean shutdown in the log) -> start -> healthy, samples kept, same certificate
#   -> the agent again, samples go on growing -> `plot` works in the image.
# Prints the figures (build time, start to healthy, image size) and exits non-zero with a message on any failure.
# Removes its container, volume and temporary files however it ends; keeps the images (the build cache).
#
# Environment: PYTHON (default .venv/bin/python: runs the agent and `pip download`; needs psutil, trio,
# trio-websocket: `make test` or `make run` makes it), MBOT_IMAGE_BASE (see deploy/podman-setup.sh),
# MBOT_TEST_IMAGE (default localhost/mbot:image-test).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-.venv/bin/python}
case $PY in
    */*) PY=$(cd "$(dirname "$PY")" 2>/dev/null && pwd)/$(basename "$PY") || PY=/nonexistent/python ;;
    *) PY=$(command -v "$PY") || PY=/nonexistent/python ;;
esac
IMAGE=${MBOT_TEST_IMAGE:-localhost/mbot:image-test}
CACHE=$ROOT/.cache/image-test
WHEELS=.cache/image-test/wheels  # relative: a path in the build context
NAME=mbot-image-test-$$
START=$(date +%s.%N)

# The agent reads AGENT_* from the environment: only this script's settings count.
for var in $(compgen -e); do case $var in AGENT_*) unset "$var" ;; esac; done

say() { echo "image-test: $*" >&2; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

CONTAINER_UP=0
fail() {
    say "FAIL: $*"
    if [ "$CONTAINER_UP" = 1 ]; then
        say "last lines of the container log:"
        # (not podman logs --tail: podman 4.3 prints an empty line for short logs)
        podman logs "$NAME" 2>&1 | tail -n 40 | sed 's/^/    /' >&2 || true
    fi
    exit 1
}

AGENT_PID=
WORK=
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$AGENT_PID" ]; then kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; fi
    if command -v podman >/dev/null 2>&1 && [ -n "${CONTAINERS_CONF:-}" ]; then
        podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
        podman volume rm -f "$NAME" >/dev/null 2>&1 || true
    fi
    if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

"$PY" -c 'import psutil, trio, trio_websocket' 2>/dev/null \
    || fail "$PY cannot import psutil, trio and trio_websocket (the agent's needs): run make test or make run first"
WORK=$(mktemp -d /tmp/mbot-image-test.XXXXXX)

# 1. podman, containers.conf, the base image.
. deploy/podman-setup.sh || fail "podman set-up failed (see above)"
BASE=$MBOT_IMAGE_BASE

# Containers and volumes left behind by a run that was killed (its shell is gone) are removed.
for stale in $(podman ps -a --filter label=mbot-image-test --format '{{.Names}}' 2>/dev/null); do
    pid=${stale##*-}
    if ! kill -0 "$pid" 2>/dev/null; then
        podman rm -f -t 0 "$stale" >/dev/null 2>&1 || true
        podman volume rm -f "$stale" >/dev/null 2>&1 || true
    fi
done

# 2. Wheels for the image's Python and platform (pip in the build cannot reach the index everywhere).
t=$(date +%s.%N)
pyver=$(podman run --rm --entrypoint python3 "$BASE" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
        2>/dev/null | tail -n 1) || fail "cannot run python3 in the base image $BASE"
case $pyver in 3.1[1-9]) ;; *) fail "the base image $BASE has Python '$pyver'; mbot needs 3.11 or newer" ;; esac
arch=$(uname -m)
platforms=(--platform "manylinux2014_$arch")
for minor in $(seq 17 40); do platforms+=(--platform "manylinux_2_${minor}_$arch"); done
"$PY" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(*p["dependencies"], *p["optional-dependencies"]["agent"], sep="\n")' \
    >"$WORK/requirements.txt"
rm -rf "$CACHE/wheels.new"
mkdir -p "$CACHE"
if ! "$PY" -m pip download -q --disable-pip-version-check --dest "$CACHE/wheels.new" --only-binary=:all: \
        --python-version "$pyver" --implementation cp --abi "cp${pyver/./}" "${platforms[@]}" \
        -r "$WORK/requirements.txt" \
        >"$WORK/pip.log" 2>&1; then
    grep -v "^WARNING: Location" "$WORK/pip.log" | tail -n 20 >&2
    rm -rf "$CACHE/wheels.new"
    # A network hiccup need not fail the test when the last run's wheels are there (a dependency added since then
    # would make the build fail, with pip's message).
    [ -n "$(ls "$CACHE/wheels" 2>/dev/null)" ] || fail "pip download of the image's wheels failed"
    say "pip download failed: building with the wheels of the last run"
    mkdir "$CACHE/wheels.new" && cp -p "$CACHE"/wheels/* "$CACHE/wheels.new/"
fi
# Only when the set changed is the directory replaced: unchanged files keep the build's COPY layer cached.
if [ -d "$CACHE/wheels" ] && diff -q <(cd "$CACHE/wheels" && ls) <(cd "$CACHE/wheels.new" && ls) >/dev/null; then
    rm -rf "$CACHE/wheels.new"
else
    rm -rf "$CACHE/wheels" && mv "$CACHE/wheels.new" "$CACHE/wheels"
fi
say "wheels for Python $pyver/$arch ready in $(since "$t") s ($(ls "$CACHE/wheels" | wc -l) files)"

# 3. The image.
old_id=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
t=$(date +%s.%N)
if ! podman build --format docker --layers --build-arg "BASE=$BASE" --build-arg "WHEELS=$WHEELS" -t "$IMAGE" . \
        >"$WORK/build.log" 2>&1; then
    tail -n 40 "$WORK/build.log" >&2
    fail "podman build failed"
fi
BUILD_S=$(since "$t")
new_id=$(podman image inspect --format '{{.Id}}' "$IMAGE")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then podman rmi "$old_id" >/dev/null 2>&1 || true; fi
# Build stages left over from older builds (a changed pyproject.toml or wheel set leaves ~400 MB each) go after a
# week; the current ones are then rebuilt at most once.
podman image prune -f --filter until=168h >/dev/null 2>&1 || true
cached=$(grep -c -- '--> Using cache' "$WORK/build.log" || true)
SIZE=$(podman image inspect --format '{{.Size}}' "$IMAGE")
say "built $IMAGE on $BASE in $BUILD_S s ($cached steps from the cache), $((SIZE / 1000000)) MB"
[ "$(podman image inspect --format '{{.Config.User}}' "$IMAGE")" = mbot ] || fail "the image does not run as user mbot"
podman image inspect --format '{{.Config.Healthcheck.Test}}' "$IMAGE" | grep -q 'mbot health' \
    || fail "the image has no HEALTHCHECK running python -m mbot health"

# 4. Run it with a fresh volume on a free port.
free_port() {
    "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
podman volume create --label mbot-image-test=1 "$NAME" >/dev/null || fail "podman volume create failed"
for attempt in 1 2 3; do
    PORT=$(free_port)
    t=$(date +%s.%N)
    # podman cannot schedule health checks without systemd ("unable to get systemd connection" on stderr, harmless):
    # this script runs them with `podman healthcheck run`.
    if podman run -d --name "$NAME" --label mbot-image-test=1 -p "127.0.0.1:$PORT:8000" -v "$NAME:/data" \
            -e MBOT_PUBLIC_HOST=127.0.0.1 -e MBOT_TZ=UTC "$IMAGE" >"$WORK/run.out" 2>"$WORK/run.err"; then
        break
    fi
    podman rm -f -t 0 "$NAME" >/dev/null 2>&1 || true
    [ "$attempt" = 3 ] && { cat "$WORK/run.err" >&2; fail "podman run failed"; }
    say "podman run failed on port $PORT (attempt $attempt), trying another port"
done
CONTAINER_UP=1

wait_healthy() {  # $1: start time; prints the seconds it took
    local deadline=$((SECONDS + 90))
    while :; do
        if [ "$(podman inspect --format '{{.State.Running}}' "$NAME")" != true ]; then
            fail "the container stopped (exit code $(podman inspect --format '{{.State.ExitCode}}' "$NAME"))"
        fi
        if timeout 30 podman healthcheck run "$NAME" >"$WORK/health.out" 2>&1; then
            since "$1"
            return 0
        fi
        if [ $SECONDS -ge $deadline ]; then
            cat "$WORK/health.out" >&2
            fail "not healthy within 90 s"
        fi
        sleep 0.5
    done
}
HEALTHY_S=$(wait_healthy "$t")
status=$(podman inspect --format '{{.State.Health.Status}}' "$NAME" 2>/dev/null \
         || podman inspect --format '{{.State.Healthcheck.Status}}' "$NAME")
[ "$status" = healthy ] || fail "podman says the container is '$status' after a passing health check"
say "healthy $HEALTHY_S s after podman run (port 127.0.0.1:$PORT)"
[ "$(podman exec "$NAME" id -u)" != 0 ] || fail "the server runs as root"

# 5. A key, made in the container.
podman exec "$NAME" python -m mbot newkey box1 >"$WORK/newkey.out" 2>"$WORK/newkey.err" \
    || { cat "$WORK/newkey.err" >&2; fail "python -m mbot newkey failed"; }
SECRET=$(sed -n 's/^AGENT_SECRET=//p' "$WORK/newkey.out")
FINGERPRINT=$(sed -n 's/^AGENT_FINGERPRINT=//p' "$WORK/newkey.out")
SERVER=$(sed -n 's/^AGENT_SERVER_IP=//p' "$WORK/newkey.out")
[ -n "$SECRET" ] && [ -n "$FINGERPRINT" ] || fail "newkey printed no AGENT_SECRET / AGENT_FINGERPRINT"
[ "$SERVER" = 127.0.0.1 ] || fail "newkey says AGENT_SERVER_IP=$SERVER, not MBOT_PUBLIC_HOST (127.0.0.1)"
# The one-liner's curl part fetches the install script from the image (it names port 8000, the container's own:
# --connect-to sends it to the published port).
LINE=$(grep '^curl .* | sudo sh -s -- ' "$WORK/newkey.out") || fail "newkey printed no one-line install"
sh -c "${LINE%% | *} --connect-to ::127.0.0.1:$PORT" >"$WORK/install.sh" 2>"$WORK/curl.err" \
    || { cat "$WORK/curl.err" >&2; fail "the one-liner's curl cannot fetch /install from the image"; }
grep -qx "FINGERPRINT='$FINGERPRINT'" "$WORK/install.sh" || fail "/install from the image is not the install script"

samples() {  # the number of samples the server has stored for box1
    podman exec "$NAME" python -m mbot hosts --json 2>"$WORK/hosts.err" | "$PY" -c '
import json, sys
hosts = [h for h in json.load(sys.stdin) if h["name"] == "box1"]
print(hosts[0]["samples"] if hosts else -1)' || { cat "$WORK/hosts.err" >&2; fail "python -m mbot hosts --json failed"; }
}

run_agent_until() {  # $1: run the real agent until box1 has more than this many samples
    local deadline=$((SECONDS + 60)) n
    mkdir -p "$WORK/agent"
    # The agent keeps .env in its working directory: a private one, so nothing of this host's is read or written.
    (cd "$WORK/agent" && exec env HOME="$WORK/agent" AGENT_SECRET="$SECRET" \
        AGENT_SERVER_IP=127.0.0.1 AGENT_PORT="$PORT" AGENT_FINGERPRINT="$FINGERPRINT" AGENT_INTERVAL=0.5 \
        AGENT_FINGERPRINT_FILE="$WORK/agent/fingerprint.json" "$PY" "$ROOT/agent/mbot_agent.py" \
        </dev/null >>"$WORK/agent.log" 2>&1) &
    AGENT_PID=$!
    while :; do
        sleep 1
        n=$(samples)
        [ "$n" -gt "$1" ] && break
        if ! kill -0 "$AGENT_PID" 2>/dev/null; then
            tail -n 20 "$WORK/agent.log" >&2
            fail "the agent exited"
        fi
        if [ $SECONDS -ge $deadline ]; then
            tail -n 20 "$WORK/agent.log" >&2
            fail "box1 has $n samples after 60 s of the agent (wanted more than $1)"
        fi
    done
    kill "$AGENT_PID"
    wait "$AGENT_PID" 2>/dev/null || true
    AGENT_PID=
}

# 6. The real agent, on this host, through the published port.
run_agent_until 3
BEFORE=$(samples)
say "the agent stored $BEFORE samples"

# 7. Restart: SIGTERM, a clean exit, the same data and certificate afterwards.
t=$(date +%s.%N)
podman stop -t 30 "$NAME" >/dev/null 2>"$WORK/stop.err" || { cat "$WORK/stop.err" >&2; fail "podman stop failed"; }
STOP_S=$(since "$t")
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
[ "$code" = 0 ] || fail "the server exited with $code on SIGTERM (wanted 0)"
podman logs "$NAME" >"$WORK/server.log" 2>&1
grep -q 'got SIGTERM' "$WORK/server.log" || fail "the server log does not show SIGTERM arriving"
grep -q 'stopped; [0-9]* samples committed' "$WORK/server.log" || fail "the server log has no clean 'stopped' line"
grep -q 'inside a container: not watching this machine' "$WORK/server.log" \
    || fail "the server log does not say that it does not watch the container (MBOT_WATCH_SELF default)"
say "stopped cleanly in $STOP_S s (exit 0)"
t=$(date +%s.%N)
podman start "$NAME" >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err" >&2; fail "podman start failed"; }
RESTART_HEALTHY_S=$(wait_healthy "$t")
AFTER=$(samples)
[ "$AFTER" -ge "$BEFORE" ] || fail "box1 had $BEFORE samples before the restart and $AFTER after"
fp=$(podman exec "$NAME" python -m mbot fingerprint)
[ "$fp" = "$FINGERPRINT" ] || fail "the certificate changed across the restart ($FINGERPRINT -> $fp)"
say "restarted: healthy in $RESTART_HEALTHY_S s, $AFTER samples kept, same certificate"

# 8. The agent again (its pin still matches), and a chart drawn in the image (matplotlib and its fonts work).
run_agent_until "$AFTER"
podman exec "$NAME" python -m mbot plot box1 cpu 1h -o /tmp/cpu.png >"$WORK/plot.out" 2>&1 \
    || { cat "$WORK/plot.out" >&2; fail "python -m mbot plot failed in the container"; }
say "the agent reconnected after the restart; plot works"

echo "image-test: OK: build ${BUILD_S} s, start to healthy ${HEALTHY_S} s (after a restart ${RESTART_HEALTHY_S} s)," \
     "stop ${STOP_S} s, image $((SIZE / 1000000)) MB, total $(since "$START") s"
