#!/bin/sh
# mbot agent installer. The mbot server serves it at https://SERVER:PORT/install with its address, port and
# certificate filled in; `python -m mbot newkey NAME` and the bot's /newkey print the line that runs it:
#
#   curl -fsSk --pinnedpubkey 'sha256//PIN' https://SERVER:PORT/install | sudo sh -s -- SECRET
#   curl -fsSk --pinnedpubkey 'sha256//PIN' https://SERVER:PORT/install | sudo sh -s -- --uninstall
#
# What it does, as root: checks for Python 3.9+; downloads the agent from the server (the same pinned curl) into
# /opt/mbot-agent; psutil, trio and trio-websocket in a venv there from PyPI, or the distribution's packages
# (apt or dnf) when PyPI cannot be reached or no venv can be made; /opt/mbot-agent/.env (0600) with the server,
# port, secret and certificate fingerprint; a system user mbot-agent; the systemd unit the agent writes itself
# (mbot_agent.py --install-systemd); checks that the agent connects, starts the unit and waits until the agent says
# it is connected. Run again, it changes nothing, or updates what changed (a new agent, a new secret) and restarts
# the agent. Without systemd it prints the command that runs the agent. --uninstall removes the unit, the user and
# /opt/mbot-agent. The secret is only ever on your command line and in .env; this script never contains it.
set -u

SERVER='@SERVER@'
URL_HOST='@URL_HOST@'
PORT='@PORT@'
FINGERPRINT='@FINGERPRINT@'
PIN='@PIN@'

DIR=/opt/mbot-agent
AGENT_USER=mbot-agent
UNIT=mbot-agent.service
UNIT_FILE=/etc/systemd/system/$UNIT
WAIT=30  # seconds to wait for the started agent to say it is connected
SETTINGS='AGENT_SERVER_IP|AGENT_PORT|AGENT_SECRET|AGENT_FINGERPRINT'  # the .env lines this script owns
CHANGED=0
TMP=

say() { printf 'mbot-install: %s\n' "$*"; }
die() { printf 'mbot-install: error: %s\n' "$*" >&2; exit 1; }
last_line() { tail -n 1 "$1" 2>/dev/null | tr -d '\r'; }
has_systemd() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# Commands never read this script's stdin: when it is piped into sh, that is the rest of the script.
usage() {
    die "usage: curl ... https://$URL_HOST:$PORT/install | sudo sh -s -- SECRET  (or -- --uninstall)"
}

need_root() {
    [ "$(id -u)" = 0 ] || die "run it as root: ... | sudo sh -s -- $1"
}

find_python() {
    PY3=$(command -v python3) \
        || die "python3 is not installed: install Python 3.9 or newer (e.g. apt-get install python3) and run this again"
    "$PY3" -c 'import sys; sys.exit(sys.version_info < (3, 9))' </dev/null \
        || die "$("$PY3" -V 2>&1 </dev/null) is too old: the agent needs Python 3.9 or newer"
}

same_file() {  # $1 and $2 exist and hold the same bytes
    [ -f "$1" ] && [ -f "$2" ] && "$PY3" -c 'import sys; sys.exit(open(sys.argv[1], "rb").read() != open(sys.argv[2], "rb").read())' "$1" "$2" </dev/null
}

put_file() {  # put_file NEW TARGET MODE OWNER: replace TARGET with NEW when they differ
    chmod "$3" "$1" && chown "$4" "$1" || die "cannot set the mode and owner of $2"
    if same_file "$1" "$2" && [ "$(stat -c '%a %U' "$2")" = "${3#0} ${4%%:*}" ]; then
        rm -f "$1"
        return
    fi
    mv -f "$1" "$2" || die "cannot write $2"
    CHANGED=1
}

# The agent file and .env are staged as *.new beside the ones in use, checked together, and only then moved into
# place: a line that does not work (a revoked key, another server) leaves a working install as it was.
stage() {  # stage NEW TARGET MODE OWNER: NEW becomes TARGET.new when it differs from TARGET
    chmod "$3" "$1" && chown "$4" "$1" || die "cannot set the mode and owner of $2"
    if same_file "$1" "$2" && [ "$(stat -c '%a %U' "$1")" = "$(stat -c '%a %U' "$2")" ]; then
        rm -f "$1"
        return
    fi
    mv -f "$1" "$2.new" || die "cannot write $2.new"
    CHANGED=1
}

current() {  # the file to use: the staged one, if any
    if [ -f "$1.new" ]; then echo "$1.new"; else echo "$1"; fi
}

commit() {
    for file in "$DIR/mbot_agent.py" "$DIR/.env"; do
        if [ -f "$file.new" ]; then mv -f "$file.new" "$file" || die "cannot write $file"; fi
    done
}

fetch_agent() {
    url="https://$URL_HOST:$PORT/agent.py"
    curl -fsS -k --pinnedpubkey "sha256//$PIN" --connect-timeout 15 --max-time 120 -o "$TMP/mbot_agent.py" "$url" \
            </dev/null 2>"$TMP/curl.log" \
        || die "cannot download the agent from $url: $(last_line "$TMP/curl.log")"
    "$PY3" -c 'import sys; compile(open(sys.argv[1], "rb").read(), sys.argv[1], "exec")' "$TMP/mbot_agent.py" \
            </dev/null >/dev/null 2>&1 \
        || die "what $url sent is not a Python file"
    stage "$TMP/mbot_agent.py" "$DIR/mbot_agent.py" 644 root:root
}

has_modules() { "$1" -c 'import psutil, trio, trio_websocket' </dev/null >/dev/null 2>&1; }

setup_python() {
    # A venv that works (a second run) is kept; so are the distribution's packages once installed.
    if [ -x "$DIR/venv/bin/python" ] && has_modules "$DIR/venv/bin/python"; then
        PYTHON=$DIR/venv/bin/python
        return
    fi
    if has_modules "$PY3"; then
        PYTHON=$PY3
        say "using $("$PY3" -V 2>&1 </dev/null) with its own psutil, trio and trio-websocket"
        return
    fi
    packages="psutil trio trio-websocket"
    if command -v nvidia-smi >/dev/null 2>&1; then packages="$packages nvidia-ml-py"; fi
    say "installing $packages from PyPI into $DIR/venv"
    rm -rf "$DIR/venv"
    if ! "$PY3" -m venv "$DIR/venv" </dev/null >"$TMP/venv.log" 2>&1; then
        why="no venv: $(last_line "$TMP/venv.log")"
    elif ! "$DIR/venv/bin/python" -m pip install -q --disable-pip-version-check --no-input --timeout 15 \
            --retries 1 $packages </dev/null >"$TMP/pip.log" 2>&1; then
        # pip's last line says only "no matching distribution"; the network's reason comes before it.
        why=$(sed -n -e "s/.*\(Failed to establish a new connection: [^)']*\).*/\1/p" \
                     -e "s/.*\(certificate verify failed[^)']*\).*/\1/p" -e "s/.*\(Read timed out\).*/\1/p" \
                     "$TMP/pip.log" | head -n 1)
        why="pip: ${why:-$(grep -v '^ *$' "$TMP/pip.log" | tail -n 1)}"
    elif ! has_modules "$DIR/venv/bin/python"; then
        why="the venv cannot import them"
    else
        PYTHON=$DIR/venv/bin/python
        CHANGED=1
        return
    fi
    rm -rf "$DIR/venv"
    say "PyPI did not work ($why); using the distribution's packages instead"
    # They belong to the distribution's own python3, which may not be the first python3 on PATH.
    system_python=/usr/bin/python3
    [ -x "$system_python" ] || system_python=$PY3
    if command -v apt-get >/dev/null 2>&1; then
        set -- python3-psutil python3-trio python3-trio-websocket
        { DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=2 update -qq \
          && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Retries=2 install -y -qq --no-install-recommends "$@"; \
        } </dev/null >"$TMP/packages.log" 2>&1 \
            || die "apt-get install $* failed: $(grep -v '^ *$' "$TMP/packages.log" | tail -n 1)"
    elif command -v dnf >/dev/null 2>&1; then
        set -- python3-psutil python3-trio python3-trio-websocket
        dnf install -y -q "$@" </dev/null >"$TMP/packages.log" 2>&1 \
            || die "dnf install $* failed: $(grep -v '^ *$' "$TMP/packages.log" | tail -n 1)"
    else
        die "PyPI did not work ($why) and there is no apt-get or dnf: install psutil, trio and trio-websocket for $system_python and run this again"
    fi
    has_modules "$system_python" \
        || die "$system_python still cannot import psutil, trio and trio_websocket after installing $*"
    PYTHON=$system_python
    CHANGED=1
    say "installed $*"
}

ensure_user() {
    if id -u "$AGENT_USER" >/dev/null 2>&1; then return; fi
    nologin=$(command -v nologin || echo /bin/false)
    if command -v useradd >/dev/null 2>&1; then
        useradd --system --user-group --home-dir "$DIR" --no-create-home --shell "$nologin" "$AGENT_USER" </dev/null \
            || die "useradd $AGENT_USER failed"
    elif command -v adduser >/dev/null 2>&1; then  # BusyBox
        adduser -S -D -H -h "$DIR" -s "$nologin" "$AGENT_USER" </dev/null || die "adduser $AGENT_USER failed"
    else
        die "neither useradd nor adduser is installed: cannot create the user $AGENT_USER"
    fi
    CHANGED=1
}

write_env() {  # .env: this script's four settings; any other lines (AGENT_ALLOW_POWER=1 ...) are kept
    {
        echo "# mbot agent settings, written by the mbot installer. Lines other than $(echo "$SETTINGS" | tr '|' ' ') are yours: kept on updates."
        printf 'AGENT_SERVER_IP=%s\nAGENT_PORT=%s\nAGENT_SECRET=%s\nAGENT_FINGERPRINT=%s\n' \
            "$SERVER" "$PORT" "$SECRET" "$FINGERPRINT"
        if [ -f "$DIR/.env" ]; then
            grep -Ev "^(# mbot agent settings, written by|(export +)?($SETTINGS)=)" "$DIR/.env" || true
        fi
    } >"$TMP/env" || die "cannot write $TMP/env"
    stage "$TMP/env" "$DIR/.env" 600 "$AGENT_USER:$AGENT_USER"
}

as_agent() {  # run "$@" as the agent's user, as the service will
    if command -v runuser >/dev/null 2>&1; then
        runuser -u "$AGENT_USER" -- "$@"
    else
        "$@"
    fi
}

check_connection() {
    if ! as_agent "$PYTHON" "$(current "$DIR/mbot_agent.py")" --env-file "$(current "$DIR/.env")" --check-connection \
            </dev/null >"$TMP/check.log" 2>&1; then
        die "the agent could not connect: $(last_line "$TMP/check.log" | sed 's/^mbot agent: //')"
    fi
}

write_unit() {  # the unit the agent writes for itself, into $TMP/unit
    mkdir -p "$TMP/unit"
    env -u SUDO_USER "$PYTHON" "$DIR/mbot_agent.py" --install-systemd --env-file "$DIR/.env" --systemd-dir "$TMP/unit" \
            </dev/null >"$TMP/unit.log" 2>&1 \
        || die "the agent could not write its systemd unit: $(last_line "$TMP/unit.log")"
}

unit_is_current() {
    [ -f "$DIR/.env" ] && [ -f "$DIR/mbot_agent.py" ] && write_unit && same_file "$TMP/unit/$UNIT" "$UNIT_FILE"
}

wait_connected() {
    invocation=$(systemctl show -p InvocationID --value "$UNIT" 2>/dev/null)
    i=0
    while [ "$i" -lt "$WAIT" ]; do
        if journalctl --no-pager -o cat "_SYSTEMD_INVOCATION_ID=$invocation" 2>/dev/null | grep -q ' INFO connected to '; then
            return 0
        fi
        case $(systemctl is-active "$UNIT" 2>/dev/null) in
            failed|inactive)
                die "the agent stopped: $(journalctl --no-pager -o cat -n 1 -u "$UNIT" 2>/dev/null)" ;;
        esac
        sleep 1
        i=$((i + 1))
    done
    die "the agent did not say it is connected within $WAIT s: see journalctl -u $UNIT"
}

install_agent() {
    SECRET=$1
    case $SECRET in
        *[!A-Za-z0-9_-]*|'') die "that is not an agent secret (letters, digits, - and _): get one with newkey" ;;
    esac
    [ ${#SECRET} -ge 20 ] || die "that is too short for an agent secret: get one with newkey"
    need_root SECRET
    find_python
    command -v curl >/dev/null 2>&1 || die "curl is not installed (apt-get install curl)"
    mkdir -p "$DIR" && chmod 755 "$DIR" || die "cannot create $DIR"
    fetch_agent
    setup_python
    ensure_user
    write_env
    if has_systemd && [ "$CHANGED" = 0 ] && unit_is_current && systemctl is-active --quiet "$UNIT" \
            && systemctl is-enabled --quiet "$UNIT"; then
        say "already installed and running as $UNIT; nothing changed"
        return
    fi
    check_connection
    commit
    if ! has_systemd; then
        say "the agent connected to $SERVER:$PORT; it is installed in $DIR"
        say "this machine has no systemd (no /run/systemd/system): start the agent yourself, and have your init system or container keep it running:"
        if command -v runuser >/dev/null 2>&1; then
            echo "    runuser -u $AGENT_USER -- $PYTHON $DIR/mbot_agent.py --env-file $DIR/.env"
        else
            echo "    $PYTHON $DIR/mbot_agent.py --env-file $DIR/.env"
        fi
        return
    fi
    write_unit
    put_file "$TMP/unit/$UNIT" "$UNIT_FILE" 644 root:root
    systemctl daemon-reload && systemctl enable --quiet "$UNIT" && systemctl restart "$UNIT" \
        || die "systemctl could not start $UNIT: $(journalctl --no-pager -o cat -n 1 -u "$UNIT" 2>/dev/null)"
    wait_connected
    say "the agent runs as $UNIT (user $AGENT_USER, $DIR) and is connected to $SERVER:$PORT"
    say "its log: journalctl -u $UNIT; remove it: the same curl line with | sudo sh -s -- --uninstall"
}

uninstall_agent() {
    need_root --uninstall
    if has_systemd; then
        systemctl disable --now --quiet "$UNIT" >/dev/null 2>&1 || true
    fi
    if [ -f "$UNIT_FILE" ]; then
        rm -f "$UNIT_FILE" || die "cannot remove $UNIT_FILE"
        if has_systemd; then
            systemctl daemon-reload
            systemctl reset-failed "$UNIT" >/dev/null 2>&1 || true
        fi
    fi
    if id -u "$AGENT_USER" >/dev/null 2>&1; then
        userdel "$AGENT_USER" </dev/null >"$TMP/userdel.log" 2>&1 \
            || die "userdel $AGENT_USER failed (is an agent still running as $AGENT_USER? stop it first): $(last_line "$TMP/userdel.log")"
    fi
    rm -rf "$DIR" || die "cannot remove $DIR"
    say "removed the agent: $UNIT, the user $AGENT_USER and $DIR (packages installed with apt or dnf stay)"
}

main() {
    [ $# = 1 ] || usage
    TMP=$(mktemp -d) || die "mktemp failed"
    trap 'rm -rf "$TMP" "$DIR/mbot_agent.py.new" "$DIR/.env.new"' EXIT
    trap 'exit 130' INT TERM
    umask 022  # the venv and the agent file must be readable by the agent's user
    case $1 in
        --uninstall) uninstall_agent ;;
        -h|--help) usage ;;
        *) install_agent "$1" ;;
    esac
}

main "$@"
