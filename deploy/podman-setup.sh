#!/usr/bin/env bash
# Makes podman usable on a Debian machine without a container registry, for building and running the mbot image.
#
#   . deploy/podman-setup.sh      # as deploy/image-test.sh does: sets CONTAINERS_CONF and MBOT_IMAGE_BASE here
#   deploy/podman-setup.sh        # the same, then prints the two variables to export
#
# 1. Installs podman and runc with apt when podman is missing (needs root), and debootstrap when (3) needs it.
# 2. Writes a containers.conf (CONTAINERS_CONF, default .cache/image-test/containers.conf) that uses runc (crun fails
#    on hosts with a mixed cgroup v1/v2 layout), cgroupfs (no systemd needed) and open-file/process limits no higher
#    than this shell's hard limits (podman's defaults are the host maxima, which fail with EPERM in some sandboxes).
# 3. MBOT_IMAGE_BASE, the image the Dockerfile builds on: when it is unset, a local Debian bookworm image with
#    python3 (3.11), venv and openssl, made once with debootstrap (about a minute) and kept as
#    localhost/debian-py:bookworm. Set MBOT_IMAGE_BASE=python:3.11-slim where a registry is reachable.
#
# Environment: MBOT_DEBIAN_MIRROR (default http://deb.debian.org/debian).

_mbot_setup() {
    local root conf nofile nproc hard want_pkgs=() base=localhost/debian-py:bookworm
    root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

    # 1. podman and runc.
    command -v podman >/dev/null 2>&1 || want_pkgs+=(podman)
    command -v runc >/dev/null 2>&1 || want_pkgs+=(runc)
    if [ -z "${MBOT_IMAGE_BASE:-}" ] && ! command -v debootstrap >/dev/null 2>&1; then
        # Only needed when the base image is missing, but checking that needs podman: installing it is cheap.
        want_pkgs+=(debootstrap)
    fi
    if [ ${#want_pkgs[@]} -gt 0 ]; then
        if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
            echo "podman-setup: ${want_pkgs[*]} missing; install them (apt-get install ${want_pkgs[*]}) and run again" >&2
            return 1
        fi
        echo "podman-setup: installing ${want_pkgs[*]}" >&2
        local log start=$SECONDS
        log=$(mktemp) || return 1
        if ! { DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=3 update -qq \
               && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=3 install -y -qq "${want_pkgs[@]}"; \
             } >"$log" 2>&1; then
            tail -n 20 "$log" >&2
            rm -f "$log"
            echo "podman-setup: apt-get install ${want_pkgs[*]} failed" >&2
            return 1
        fi
        rm -f "$log"
        echo "podman-setup: installed in $((SECONDS - start)) s" >&2
    fi

    # 2. containers.conf.
    conf=${CONTAINERS_CONF:-$root/.cache/image-test/containers.conf}
    hard=$(ulimit -Hn)
    nofile=20000
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$nofile" ]; then nofile=$hard; fi
    hard=$(ulimit -Hu)
    nproc=4096
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$nproc" ]; then nproc=$hard; fi
    mkdir -p "$(dirname "$conf")" || return 1
    printf '%s\n' \
        "# Written by deploy/podman-setup.sh." \
        "[containers]" \
        "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]" \
        "" \
        "[engine]" \
        "runtime = \"runc\"" \
        "cgroup_manager = \"cgroupfs\"" \
        "events_logger = \"file\"" >"$conf.tmp" && mv "$conf.tmp" "$conf" || return 1
    export CONTAINERS_CONF=$conf
    if ! podman info >/dev/null 2>"$conf.err"; then
        echo "podman-setup: podman does not work here:" >&2
        cat "$conf.err" >&2
        return 1
    fi
    rm -f "$conf.err"

    # 3. The base image.
    if [ -n "${MBOT_IMAGE_BASE:-}" ]; then
        export MBOT_IMAGE_BASE
        return 0
    fi
    export MBOT_IMAGE_BASE=$base
    if podman image exists "$base"; then
        return 0
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "podman-setup: making $base needs root (debootstrap); or set MBOT_IMAGE_BASE=python:3.11-slim" >&2
        return 1
    fi
    local tmp start attempt
    start=$SECONDS
    tmp=$(mktemp -d /var/tmp/mbot-rootfs.XXXXXX) || return 1
    echo "podman-setup: making the base image $base with debootstrap (about a minute, once)" >&2
    for attempt in 1 2 3; do
        # --include: python3 (3.11 in bookworm) and python3-venv, as python:3.11-slim has them; openssl comes with
        # ca-certificates.
        if debootstrap --variant=minbase --include=python3,python3-venv,openssl,ca-certificates bookworm \
                "$tmp/rootfs" "${MBOT_DEBIAN_MIRROR:-http://deb.debian.org/debian}" >"$tmp/debootstrap.log" 2>&1; then
            break
        fi
        echo "podman-setup: debootstrap failed (attempt $attempt of 3):" >&2
        tail -n 5 "$tmp/debootstrap.log" >&2
        if [ "$attempt" = 3 ]; then rm -rf "$tmp"; return 1; fi
        rm -rf "$tmp/rootfs"
        sleep 5
    done
    rm -rf "$tmp"/rootfs/var/cache/apt/archives/*.deb "$tmp"/rootfs/var/lib/apt/lists/* "$tmp"/rootfs/tmp/*
    if ! tar -C "$tmp/rootfs" -c . | podman import --change 'CMD ["python3"]' - "$base" >"$tmp/import.log" 2>&1; then
        cat "$tmp/import.log" >&2
        echo "podman-setup: podman import of the base image failed" >&2
        rm -rf "$tmp"
        return 1
    fi
    rm -rf "$tmp"
    echo "podman-setup: made $base in $((SECONDS - start)) s" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    _mbot_setup
    echo "export CONTAINERS_CONF=$CONTAINERS_CONF"
    echo "export MBOT_IMAGE_BASE=$MBOT_IMAGE_BASE"
else
    _mbot_setup
fi
