#!/usr/bin/env bash
# The pinned one-liner, end to end (make install-test): the server runs on this machine, listening on the address it
# guesses for itself (no MBOT_PUBLIC_HOST); `newkey` prints the line; the line runs, unchanged, as root inside fresh
# Debian 12 containers that reach the server over podman's network:
#   A. systemd as PID 1, PyPI reachable: a venv from PyPI, the unit started, "connected"; samples arrive; a second
#      run changes nothing (same files, same agent process); a line with an unknown secret fails in one line and
#      changes nothing; the line of a new key updates .env and restarts the agent; --uninstall leaves no unit, user
#      or directory.
#   B. no systemd, PyPI unreachable (pypi.org and files.pythonhosted.org resolve to 127.0.0.1 inside): Debian's
#      python3-psutil/-trio/-trio-websocket from deb.debian.org; the agent connects (--check-connection) and the
#      script prints the command that runs it; that command, run as printed, delivers samples; a second run changes
#      nothing; --uninstall leaves no user or directory.
# Prints the timings and exits non-zero with a message on any failure. Removes its containers, the server and its
# temporary files however it ends; keeps the two test images (localhost/mbot-install-test:*) as a cache.
#
# "PyPI reachable" is the real PyPI, through whatever this machine uses to reach it: its CA bundle
# (/etc/ssl/certs/ca-certificates.crt, which may hold a proxy's CA) is mounted into the container and named in its
# /etc/pip.conf. Where PyPI cannot be reached from a container at all, a wheel directory made here with
# `pip download` stands in for it (find-links, no-index), and the summary says so.
#
# Environment: PYTHON (default .venv/bin/python: runs the server; `make install-test` passes it), MBOT_IMAGE_BASE
# (see deploy/podman-setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-.venv/bin/python}
case $PY in
    */*) PY=$(cd "$(dirname "$PY")" 2>/dev/null && pwd)/$(basename "$PY") || PY=/nonexistent/python ;;
    *) PY=$(command -v "$PY") || PY=/nonexistent/python ;;
esac
CACHE=$ROOT/.cache/install-test
IMAGE=localhost/mbot-install-test:bookworm
IMAGE_SYSTEMD=localhost/mbot-install-test:systemd
TAG=mbot-install-test-$$
START=$(date +%s.%N)

for var in $(compgen -e); do case $var in AGENT_*|MBOT_*|PORT|BOT_TOKEN) unset "$var" ;; esac; done

say() { echo "install-test: $*" >&2; }
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

WORK=
SERVER_PID=
fail() {
    say "FAIL: $*"
    if [ -n "$WORK" ] && [ -f "$WORK/server.log" ]; then
        say "last lines of the server log:"
        tail -n 15 "$WORK/server.log" | sed 's/^/    /' >&2
    fi
    exit 1
}
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if command -v podman >/dev/null 2>&1 && [ -n "${CONTAINERS_CONF:-}" ]; then
        podman rm -f -t 0 "$TAG-a" "$TAG-b" >/dev/null 2>&1 || true
    fi
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [ -n "$WORK" ]; then rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'say "interrupted"; exit 130' INT TERM

"$PY" -c 'import trio, trio_websocket, httpx, matplotlib' 2>/dev/null \
    || fail "$PY cannot import the server's packages: run make test or make run first"
command -v curl >/dev/null || fail "curl is needed here too"
WORK=$(mktemp -d /tmp/mbot-install-test.XXXXXX)

# 1. podman, the base image, and the two test images made from it once (a stock Debian has curl and sudo).
. deploy/podman-setup.sh || fail "podman set-up failed (see above)"
for stale in $(podman ps -a --filter label=mbot-install-test --format '{{.Names}}' 2>/dev/null); do
    pid=${stale#mbot-install-test-}; pid=${pid%-*}
    kill -0 "$pid" 2>/dev/null || podman rm -f -t 0 "$stale" >/dev/null 2>&1 || true
done
t=$(date +%s.%N)
build() {  # build TAG PACKAGES...: the base image plus these Debian packages, unless TAG has them already
    local tag=$1; shift
    [ "$(podman image inspect --format '{{index .Labels "mbot.packages"}}' "$tag" 2>/dev/null)" = "$*" ] && return 0
    say "building $tag (once: it is kept as a cache)"
    mkdir -p "$WORK/build"
    printf 'FROM %s\nRUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends %s >/dev/null && rm -rf /var/lib/apt/lists/*\nLABEL mbot.packages="%s"\n' \
        "$MBOT_IMAGE_BASE" "$*" "$*" >"$WORK/build/Containerfile"
    podman build -q -t "$tag" "$WORK/build" >"$WORK/build.log" 2>&1 || { tail -n 20 "$WORK/build.log" >&2; fail "podman build $tag failed"; }
}
build "$IMAGE" curl sudo
build "$IMAGE_SYSTEMD" curl sudo systemd systemd-sysv
say "test images ready in $(since "$t") s"

# 2. The server, on the address it guesses for itself; newkey's lines.
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
GUESS=$(PYTHONPATH=$ROOT "$PY" -c 'from mbot.config import guess_public_host; print(guess_public_host())')
"$PY" -c 'import ipaddress, sys; a = ipaddress.ip_address(sys.argv[1]); sys.exit(a.is_loopback)' "$GUESS" 2>/dev/null \
    || fail "this machine has no default route address to test with (the guess is '$GUESS')"
PORT=$(free_port)
export MBOT_DATA_DIR=$WORK/data PORT MBOT_HOST=$GUESS MBOT_WATCH_SELF=0 PYTHONPATH=$ROOT
(cd "$WORK" && exec "$PY" -m mbot serve >"$WORK/server.log" 2>&1) &
SERVER_PID=$!
deadline=$((SECONDS + 30))
until grep -q 'mbot is up' "$WORK/server.log"; do
    kill -0 "$SERVER_PID" 2>/dev/null || fail "the server exited"
    [ $SECONDS -lt $deadline ] || fail "the server did not come up within 30 s"
    sleep 0.2
done
grep -q "MBOT_PUBLIC_HOST is not set: new keys tell agents to reach this server at $GUESS" "$WORK/server.log" \
    || fail "the server did not say at start that $GUESS was guessed"

one_liner() {  # one_liner NAME: the curl line `newkey NAME` prints
    "$PY" -m mbot newkey "$1" >"$WORK/newkey-$1.out" 2>"$WORK/newkey.err" || { cat "$WORK/newkey.err" >&2; fail "newkey $1 failed"; }
    grep -q "^# $GUESS is a guess" "$WORK/newkey-$1.out" || fail "newkey did not say that $GUESS is a guess"
    grep "^curl .* | sudo sh -s -- " "$WORK/newkey-$1.out" || fail "newkey printed no curl line"
}
samples() {  # samples NAME: what the server has stored for that host
    "$PY" -m mbot hosts --json 2>/dev/null | "$PY" -c '
import json, sys
hosts = [h for h in json.load(sys.stdin) if h["name"] == sys.argv[1]]
print(hosts[0]["samples"] if hosts else -1)' "$1"
}
wait_samples() {  # wait_samples NAME: until NAME has 2 samples (the agent sends one every 5 s)
    local deadline=$((SECONDS + 40)) n
    while n=$(samples "$1"); [ "$n" -lt 2 ]; do
        [ $SECONDS -lt $deadline ] || fail "$1 has $n samples 40 s after the install"
        sleep 1
    done
}
in_box() { podman exec "$BOX" sh -c "$1"; }
run_line() {  # run_line LINE LOG: the line as a user pastes it, as root in the container; prints the seconds
    local t
    t=$(date +%s.%N)
    if ! podman exec "$BOX" sh -c "$1" >"$2" 2>&1; then
        sed 's/^/    /' "$2" >&2
        fail "the one-liner failed in $BOX"
    fi
    since "$t"
}
state() {  # what a second run must leave as it was
    in_box 'cd /opt/mbot-agent && md5sum .env mbot_agent.py /etc/systemd/system/mbot-agent.service 2>/dev/null; stat -c "%a %U" .env; ls; id mbot-agent; true'
}
gone() {  # nothing of the agent left in the container
    in_box 'test ! -e /opt/mbot-agent' || fail "/opt/mbot-agent is still there after --uninstall"
    in_box '! id mbot-agent >/dev/null 2>&1 && ! getent group mbot-agent >/dev/null' \
        || fail "the user or group mbot-agent is still there after --uninstall"
    in_box 'test ! -e /etc/systemd/system/mbot-agent.service' || fail "the unit file is still there after --uninstall"
}
CA=/etc/ssl/certs/ca-certificates.crt
ca_mount=()
[ -f "$CA" ] && ca_mount=(-v "$CA:/etc/mbot-test-ca.crt:ro")

# 3. PyPI from a container: the real one, or a wheel directory standing in for it.
PYPI="the real PyPI"
pip_conf='[global]\n'
[ -f "$CA" ] && pip_conf+='cert = /etc/mbot-test-ca.crt\n'
wheels_mount=()
if ! podman run --rm "${ca_mount[@]}" "$IMAGE" python3 -c '
import os, ssl, urllib.request
ca = "/etc/mbot-test-ca.crt" if os.path.exists("/etc/mbot-test-ca.crt") else None
urllib.request.urlopen("https://pypi.org/simple/trio/", timeout=10, context=ssl.create_default_context(cafile=ca))
' >/dev/null 2>&1; then
    PYPI="a local wheel directory standing in for PyPI (PyPI is unreachable from containers here)"
    pyver=$(podman run --rm "$IMAGE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    arch=$(uname -m)
    mkdir -p "$CACHE/wheels"
    "$PY" -m pip download -q --disable-pip-version-check --dest "$CACHE/wheels" --only-binary=:all: \
        --python-version "$pyver" --implementation cp --platform "manylinux2014_$arch" \
        --platform "manylinux_2_17_$arch" --platform "manylinux_2_28_$arch" psutil trio trio-websocket \
        >"$WORK/pip.log" 2>&1 || [ -n "$(ls "$CACHE/wheels")" ] || { tail -n 5 "$WORK/pip.log" >&2; fail "pip download failed"; }
    pip_conf+='no-index = true\nfind-links = /wheels\n'
    wheels_mount=(-v "$CACHE/wheels:/wheels:ro")
fi
say "server at $GUESS:$PORT (guessed); PyPI: $PYPI"

# 4. A: systemd, PyPI.
LINE=$(one_liner box-a)
BOX=$TAG-a
t=$(date +%s.%N)
podman run -d --name "$BOX" --label mbot-install-test=1 --systemd=always "${ca_mount[@]}" "${wheels_mount[@]}" \
    "$IMAGE_SYSTEMD" /sbin/init >/dev/null 2>"$WORK/run.err" || { cat "$WORK/run.err" >&2; fail "podman run (systemd) failed"; }
deadline=$((SECONDS + 30))
until in_box 'systemctl is-system-running 2>/dev/null | grep -Eq "running|degraded"'; do
    [ $SECONDS -lt $deadline ] || fail "systemd in the container did not finish booting within 30 s"
    sleep 0.5
done
BOOT_S=$(since "$t")
in_box "printf '$pip_conf' >/etc/pip.conf"
A_S=$(run_line "$LINE" "$WORK/a1.log")
sed 's/^/    A> /' "$WORK/a1.log" >&2
grep -q "is connected to $GUESS:$PORT" "$WORK/a1.log" || { cat "$WORK/a1.log" >&2; fail "A: the script did not say the agent is connected"; }
grep -q "PyPI did not work" "$WORK/a1.log" && { cat "$WORK/a1.log" >&2; fail "A: PyPI was reachable, yet the script fell back"; }
in_box 'test -x /opt/mbot-agent/venv/bin/python && systemctl is-active --quiet mbot-agent && systemctl is-enabled --quiet mbot-agent' \
    || fail "A: no venv, or the unit is not active and enabled"
[ "$(in_box 'stat -c "%a %U" /opt/mbot-agent/.env')" = "600 mbot-agent" ] || fail "A: .env is not 0600 and the agent user's"
[ "$(in_box 'stat -c %U /proc/$(systemctl show -p MainPID --value mbot-agent)')" = mbot-agent ] \
    || fail "A: the agent does not run as mbot-agent"
wait_samples box-a
before=$(state); pid=$(in_box 'systemctl show -p MainPID --value mbot-agent')
A2_S=$(run_line "$LINE" "$WORK/a2.log")
grep -q "nothing changed" "$WORK/a2.log" || { cat "$WORK/a2.log" >&2; fail "A: the second run did not say that nothing changed"; }
[ "$(state)" = "$before" ] || fail "A: the second run changed files"
[ "$(in_box 'systemctl show -p MainPID --value mbot-agent')" = "$pid" ] || fail "A: the second run restarted the agent"
# A line that cannot work (an unknown secret) fails in one line and leaves the working install as it was.
bad=$(head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 43)
if podman exec "$BOX" sh -c "${LINE% -- *} -- $bad" >"$WORK/a-bad.log" 2>&1; then
    fail "A: the line with an unknown secret succeeded"
fi
grep -q "^mbot-install: error: the agent could not connect: secret rejected" "$WORK/a-bad.log" \
    || { cat "$WORK/a-bad.log" >&2; fail "A: an unknown secret did not fail with 'secret rejected'"; }
[ "$(state)" = "$before" ] || fail "A: the failed line changed files"
[ "$(in_box 'systemctl show -p MainPID --value mbot-agent')" = "$pid" ] || fail "A: the failed line stopped the agent"
# A new key for the same machine: .env changes, the agent is restarted with it.
LINE=$(one_liner box-a2)
AU_S=$(run_line "$LINE" "$WORK/a-update.log")
grep -q "is connected to $GUESS:$PORT" "$WORK/a-update.log" || { cat "$WORK/a-update.log" >&2; fail "A: no connection after the update"; }
[ "$(in_box 'systemctl show -p MainPID --value mbot-agent')" != "$pid" ] || fail "A: the agent was not restarted with its new key"
in_box "grep -qx 'AGENT_SECRET=${LINE##* }' /opt/mbot-agent/.env" || fail "A: .env does not hold the new secret"
A3_S=$(run_line "${LINE% -- *} -- --uninstall" "$WORK/a3.log")
gone
in_box '! systemctl cat mbot-agent >/dev/null 2>&1' || fail "A: systemd still knows mbot-agent after --uninstall"
say "A (systemd, $PYPI): boot $BOOT_S s, install $A_S s, second run $A2_S s, new key $AU_S s, uninstall $A3_S s;" \
    "$(samples box-a) samples"
podman rm -f -t 0 "$BOX" >/dev/null 2>&1

# 5. B: no systemd, no PyPI.
LINE=$(one_liner box-b)
BOX=$TAG-b
podman run -d --name "$BOX" --label mbot-install-test=1 --add-host pypi.org:127.0.0.1 \
    --add-host files.pythonhosted.org:127.0.0.1 "$IMAGE" sleep infinity >/dev/null 2>"$WORK/run.err" \
    || { cat "$WORK/run.err" >&2; fail "podman run failed"; }
B_S=$(run_line "$LINE" "$WORK/b1.log")
sed 's/^/    B> /' "$WORK/b1.log" >&2
grep -q "PyPI did not work" "$WORK/b1.log" && grep -q "installed python3-psutil python3-trio python3-trio-websocket" "$WORK/b1.log" \
    || { cat "$WORK/b1.log" >&2; fail "B: the script did not fall back to Debian's packages"; }
grep -q "the agent connected to $GUESS:$PORT" "$WORK/b1.log" || { cat "$WORK/b1.log" >&2; fail "B: no connection"; }
command=$(grep -A1 "has no systemd" "$WORK/b1.log" | tail -n 1 | sed 's/^ *//')
case $command in runuser*mbot_agent.py*) ;; *) cat "$WORK/b1.log" >&2; fail "B: the script printed no command to run the agent" ;; esac
podman exec -d "$BOX" sh -c "echo \$\$ >/tmp/agent.pid; exec $command >/tmp/agent.log 2>&1" >/dev/null
wait_samples box-b
before=$(state)
B2_S=$(run_line "$LINE" "$WORK/b2.log")
grep -q "installing\|installed python3\|PyPI did not work" "$WORK/b2.log" && { cat "$WORK/b2.log" >&2; fail "B: the second run installed packages again"; }
[ "$(state)" = "$before" ] || fail "B: the second run changed files"
in_box 'kill $(cat /tmp/agent.pid); for i in $(seq 50); do kill -0 $(cat /tmp/agent.pid) 2>/dev/null || exit 0; sleep 0.1; done; exit 1' \
    || fail "B: the agent did not stop on SIGTERM"
B3_S=$(run_line "${LINE% -- *} -- --uninstall" "$WORK/b3.log")
gone
say "B (no systemd, no PyPI: Debian's packages): install $B_S s, second run $B2_S s, uninstall $B3_S s; $(samples box-b) samples"

grep -q Traceback "$WORK/server.log" && { grep -B2 -A10 Traceback "$WORK/server.log" | head -n 30 >&2; fail "a traceback in the server log"; }
echo "install-test: OK: A (systemd, $PYPI) install ${A_S} s, again ${A2_S} s, uninstall ${A3_S} s;" \
     "B (no systemd, apt) install ${B_S} s, again ${B2_S} s, uninstall ${B3_S} s; total $(since "$START") s"
