#!/usr/bin/env bash
# The agent's cost with 50 containers (issue 14's target: under 0.1 % of a core at 5 s): 50 `sleep infinity`
# containers in a Podman service on a temporary socket (deploy/podman-setup.sh), then bench/agent_cost.py without and
# with container collection. As root on Debian, like make container-test; about 7 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/podman-setup.sh >/dev/null
SOCK=/tmp/bench-podman.sock
rm -f "$SOCK"
podman system service --time=0 "unix://$SOCK" & SVC=$!
trap 'podman rm -f -t 0 $(podman ps -aq --filter label=mbot-bench50) >/dev/null 2>&1 || true; kill $SVC 2>/dev/null || true' EXIT
for i in $(seq 1 50); do podman run -d --label mbot-bench50 --name bench50-$i "$MBOT_IMAGE_BASE" sleep infinity >/dev/null; done
echo "containers: $(podman ps -q --filter label=mbot-bench50 | wc -l)"
uptime
.venv/bin/python bench/agent_cost.py --duration 150 --warmup 60 2>&1 | tail -8
.venv/bin/python bench/agent_cost.py --duration 150 --warmup 60 --containers "$SOCK" 2>&1 | tail -8
uptime
