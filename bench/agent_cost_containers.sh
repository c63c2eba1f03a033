#!/usr/bin/env bash
# The agent's cost with 50 containers (issue 14's target: under 0.1 % of a core at 5 s), this checkout's agent beside
# a baseline's, in the same conditions: 50 `sleep infinity` containers in a Podman service on a temporary socket
# (deploy/podman-setup.sh), then bench/agent_cost.py for each agent without and with container collection, back to
# back, ROUNDS times (default 2), the order reversed every other round. As root on Debian, like make
# container-test; about 15 minutes a round.
#
#   bench/agent_cost_containers.sh            # baseline: main's agent/mbot_agent.py
#   bench/agent_cost_containers.sh HEAD~3     # baseline: any revision's
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-main}
ROUNDS=${ROUNDS:-2}
. deploy/podman-setup.sh >/dev/null
WORK=$(mktemp -d /tmp/bench-agent-cost.XXXXXX)
SOCK=$WORK/podman.sock
LABEL=mbot-bench50-$$
git show "$BASE:agent/mbot_agent.py" > "$WORK/baseline_agent.py"
cp agent/mbot_agent.py "$WORK/this_agent.py"  # as it is now: editing the checkout meanwhile changes nothing here
podman system service --time=0 "unix://$SOCK" & SVC=$!
trap 'podman rm -f -t 0 $(podman ps -aq --filter label=$LABEL) >/dev/null 2>&1 || true; kill $SVC 2>/dev/null || true; rm -rf "$WORK"' EXIT
for i in $(seq 1 50); do
    podman run -d --label "$LABEL" --name "bench50-$$-$i" "$MBOT_IMAGE_BASE" sleep infinity >/dev/null
done
echo "containers: $(podman ps -q --filter label=$LABEL | wc -l); baseline: $BASE ($(git rev-parse --short "$BASE"))," \
     "this checkout: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- agent/mbot_agent.py || echo ' + changes')"

run() {  # LABEL AGENT [agent_cost.py options]
    local label=$1 agent=$2
    shift 2
    echo "== $label ($(uptime | sed 's/.*load/load/'))"
    .venv/bin/python bench/agent_cost.py --duration 150 --warmup 60 --agent "$agent" "$@" 2>&1 \
        | grep -E '^(interval|agent RSS|agent CPU)'
}
for round in $(seq 1 "$ROUNDS"); do
    runs=("baseline|$WORK/baseline_agent.py" "this checkout|$WORK/this_agent.py")
    if [ $((round % 2)) = 0 ]; then runs=("${runs[1]}" "${runs[0]}"); fi
    for containers in off "$SOCK"; do
        for entry in "${runs[@]}"; do
            name=${entry%%|*}
            run "round $round, $name, containers $([ "$containers" = off ] && echo off || echo 50)" "${entry#*|}" \
                --containers "$containers"
        done
    done
done
