#!/bin/sh
# Starts one student's code-server the way the gateway expects it (issue 9). Runs in the image
# (codeserver/Dockerfile) and outside it, so tests run it against a locally installed code-server.
#
# Environment (defaults in brackets):
#   WORKSPACE_PORT      [8080]  port the gateway proxies to; /healthz answers there
#   WORKSPACE_BIND_HOST [0.0.0.0] address to bind (tests use 127.0.0.1)
#   WORKSPACE_DIR       [/home/coder/workspace] the student's folder: the EFS access point mount
#   HOME                the image's /home/coder; code-server writes ~/.config/code-server there
#   USER_DATA_DIR       [$HOME/.local/share/code-server] settings, state, logs (not on EFS)
#   EXTENSIONS_DIR      [$USER_DATA_DIR/extensions]
#   CODE_SERVER_BIN     [code-server] the binary to exec
#   WORKSPACE_ID        the workspace this task serves (ECS sets it). Set: code-server refuses
#                       requests the gateway meant for another workspace (workspace-identity.cjs)
#   WORKSPACE_KEY       this start's key (ECS sets it), passed on to code-server: the preload proves
#                       to the gateway with it, on each new connection, that this is the workspace;
#                       without it the gateway sends this task nothing. The preload keeps it from
#                       what code-server starts (extension host, terminals).
# Extra arguments are passed to code-server before the folder (none that moves its listener).
set -eu

WORKSPACE_PORT=${WORKSPACE_PORT:-8080}
WORKSPACE_BIND_HOST=${WORKSPACE_BIND_HOST:-0.0.0.0}
WORKSPACE_DIR=${WORKSPACE_DIR:-/home/coder/workspace}
USER_DATA_DIR=${USER_DATA_DIR:-$HOME/.local/share/code-server}
EXTENSIONS_DIR=${EXTENSIONS_DIR:-$USER_DATA_DIR/extensions}
CODE_SERVER_BIN=${CODE_SERVER_BIN:-code-server}

case $WORKSPACE_PORT in
  ''|*[!0-9]*) echo "entrypoint: WORKSPACE_PORT must be a port number, got '$WORKSPACE_PORT'" >&2; exit 64 ;;
esac
# code-server lets $PORT override --bind-addr's port; WORKSPACE_PORT is the one contract.
unset PORT
# So are extra arguments that move the listener (code-server takes the last --bind-addr): off
# WORKSPACE_PORT, workspace-identity.cjs would guard nothing and code-server would serve anyone.
for arg in "$@"; do
  case $arg in
    --bind-addr|--bind-addr=*|--host|--host=*|--port|--port=*|--socket|--socket=*)
      echo "entrypoint: $arg is not accepted: code-server listens on WORKSPACE_BIND_HOST:WORKSPACE_PORT" >&2; exit 64 ;;
  esac
done

mkdir -p "$WORKSPACE_DIR" "$USER_DATA_DIR/User" "$EXTENSIONS_DIR"

# A task that got a dead task's IP (or a process on a reused port) must not serve that workspace's
# student: the gateway names the workspace in x-gateway-workspace, and this preload answers 421 to a
# request for another one. It guards only the server on WORKSPACE_PORT and takes itself out of
# NODE_OPTIONS there, so what code-server starts after (extension host, terminals) never loads it.
if [ -n "${WORKSPACE_ID:-}" ]; then
  preload="$(cd "$(dirname "$0")" && pwd -P)/workspace-identity.cjs"
  if [ ! -r "$preload" ]; then
    echo "entrypoint: WORKSPACE_ID is set but $preload is missing" >&2; exit 66
  fi
  # Node reads NODE_OPTIONS' double quotes with backslash escapes: a " or \ in the path is escaped.
  quoted=$(printf '%s' "$preload" | sed 's/["\\]/\\&/g')
  NODE_OPTIONS="${NODE_OPTIONS:+$NODE_OPTIONS }--require=\"$quoted\""
  export WORKSPACE_ID WORKSPACE_PORT NODE_OPTIONS
fi

# Platform defaults for a fresh user-data dir. A student's own settings.json (when USER_DATA_DIR
# is kept across restarts) is left alone.
settings="$USER_DATA_DIR/User/settings.json"
if [ ! -s "$settings" ]; then
  cat > "$settings" <<'JSON'
{
  "files.autoSave": "afterDelay",
  "files.autoSaveDelay": 1000,
  "telemetry.telemetryLevel": "off",
  "update.mode": "none",
  "extensions.autoCheckUpdates": false,
  "extensions.autoUpdate": false,
  "security.workspace.trust.enabled": false,
  "workbench.enableExperiments": false
}
JSON
fi

# exec: code-server becomes this process, so SIGTERM from the init (tini/dumb-init, or ECS's
# initProcessEnabled) reaches it directly. --auth none: the gateway authenticates the student and
# the security group lets only the gateway in.
exec "$CODE_SERVER_BIN" \
  --auth none \
  --bind-addr "$WORKSPACE_BIND_HOST:$WORKSPACE_PORT" \
  --user-data-dir "$USER_DATA_DIR" \
  --extensions-dir "$EXTENSIONS_DIR" \
  --disable-telemetry \
  --disable-update-check \
  --disable-workspace-trust \
  --disable-getting-started-override \
  --ignore-last-opened \
  "$@" \
  "$WORKSPACE_DIR"
