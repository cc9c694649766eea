#!/bin/sh
# Role dispatcher for the Plant image: one image, and the first argument picks what it runs.
#
#   api | worker | worker-audit | beat | flower | migrate | seed   start that role
#   seal-keys                                                     seal the retired signing keys, once
#   healthcheck                                                   check the role this container runs
#   anything else                                                 exec'd as given (plant db check, sh, ...)
#
# The role is recorded in /tmp/plant-role (PLANT_ROLE_FILE) so that `healthcheck` (the image's
# HEALTHCHECK, run by the engine as a separate process that never sees our arguments) knows
# what to probe.
# Every long-running role is exec'd, so it is PID 1 and receives SIGTERM directly.
set -eu

ROLE_FILE="${PLANT_ROLE_FILE:-/tmp/plant-role}"
DATA_DIR="${PLANT_DATA_DIR:-/var/lib/plant}"
BEAT_SCHEDULE="${DATA_DIR}/celerybeat-schedule"
# Beat writes its schedule file at most every 3 minutes (celery's sync_every) and only when it
# sends a task; requeue-stale-jobs runs every PLANT_REQUEUE_INTERVAL_SECONDS (5 s by default).
# A file untouched for 10 minutes means the scheduler loop is stuck or dead.
BEAT_STALE_MINUTES="${PLANT_BEAT_STALE_MINUTES:-10}"

record_role() {
    # record_role ROLE [NODE]: the role, and a worker's Celery node name, which its check pings.
    printf '%s\n' "$@" > "$ROLE_FILE"
}

node_host() {
    # The host part of a worker's Celery node name, unique per container. Cloud Run gives every
    # instance the hostname localhost: two worker instances answered as one node (one worker in
    # /health and Flower, whichever replied), so there the name gets a random suffix.
    host="$(hostname)"
    if [ "$host" = localhost ]; then
        host="localhost-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
    fi
    printf '%s\n' "$host"
}

recorded_node() {
    # recorded_node DEFAULT_PREFIX: the node name record_role kept, else PREFIX@$(hostname).
    node="$(sed -n 2p "$ROLE_FILE" 2>/dev/null || true)"
    printf '%s\n' "${node:-$1@$(hostname)}"
}

api_port() {
    # gunicorn.conf.py binds PLANT_BIND, else 0.0.0.0:$PORT (Cloud Run), else 127.0.0.1:$PLANT_PORT.
    if [ -n "${PLANT_BIND:-}" ]; then
        printf '%s\n' "${PLANT_BIND##*:}"
    else
        printf '%s\n' "${PORT:-8000}"
    fi
}

http_ok() {
    # http_ok URL: exit 0 when URL answers 200. No curl in the slim image; Python is there.
    python - "$1" <<'PY'
import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as exc:  # an HTTP 503 arrives here as HTTPError
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}

healthcheck() {
    role="$(head -n 1 "$ROLE_FILE" 2>/dev/null || true)"
    role="${role:-unknown}"
    case "$role" in
        api)
            # /health answers 200 (ok or degraded) only when PostgreSQL and Redis answer.
            http_ok "http://127.0.0.1:$(api_port)/health"
            ;;
        worker)
            # A ping through the broker to this very node proves the worker consumes.
            exec celery -A worker.app inspect ping --timeout 5 -d "$(recorded_node default)"
            ;;
        worker-audit)
            exec celery -A worker.app inspect ping --timeout 5 -d "$(recorded_node audit)"
            ;;
        beat)
            # Beat answers no ping; its schedule file's mtime is its heartbeat (see above).
            # dbm may add a suffix (.db, .dat), hence the glob.
            fresh="$(find "$DATA_DIR" -maxdepth 1 -name 'celerybeat-schedule*' \
                -mmin "-${BEAT_STALE_MINUTES}" 2>/dev/null | head -n 1)"
            if [ -z "$fresh" ]; then
                echo "unhealthy: ${BEAT_SCHEDULE}* not written in ${BEAT_STALE_MINUTES} min" >&2
                exit 1
            fi
            ;;
        flower)
            # /healthcheck is the one Flower page that needs no basic auth.
            http_ok "http://127.0.0.1:${PORT:-5555}/healthcheck"
            ;;
        migrate | seed | seal-keys)
            exit 0 # one-shot: its exit status is the check
            ;;
        *)
            echo "unhealthy: no role recorded in ${ROLE_FILE}" >&2
            exit 1
            ;;
    esac
}

require() {
    # require NAME...: refuse to start without these variables (no silent dev defaults), or
    # with .env.example's placeholder in one.
    for name in "$@"; do
        eval "value=\${${name}:-}"
        if [ -z "$value" ]; then
            echo "plant-entrypoint: ${name} must be set for role '${ROLE}'" >&2
            exit 64
        fi
    done
    no_placeholder "$@"
}

require_secret() {
    # require_secret NAME...: as require, each given either itself or as NAME_FILE, the path of a
    # file holding it (compose's secrets, models/settings.py reads it). Plant itself refuses both
    # set, and a file it cannot read or holding nothing, naming them.
    for name in "$@"; do
        eval "value=\${${name}:-}\${${name}_FILE:-}"
        if [ -z "$value" ]; then
            echo "plant-entrypoint: ${name} (or ${name}_FILE, a file holding it) must be set for role '${ROLE}'" >&2
            exit 64
        fi
    done
    no_placeholder "$@"
}

no_placeholder() {
    # no_placeholder NAME...: refuse a variable, or the file its NAME_FILE names, still holding
    # .env.example's placeholder (change-me): a Redis, Flower or database password anyone can read
    # in the repository. The value itself is not printed.
    for name in "$@"; do
        eval "value=\${${name}:-}"
        eval "file=\${${name}_FILE:-}"
        given="${name}"
        if [ -z "$value" ] && [ -n "$file" ] && [ -r "$file" ] && [ -f "$file" ]; then
            value="$(cat "$file")"
            given="the file ${name}_FILE names (${file})"
        fi
        case "$value" in
            *change-me*)
                echo "plant-entrypoint: ${given} still holds the placeholder change-me from .env.example; set a secret of your own" >&2
                exit 64
                ;;
        esac
    done
}

ROLE="${1:-api}"
[ "$#" -gt 0 ] && shift

case "$ROLE" in
    api)
        require_secret DATABASE_URL REDIS_URL
        record_role api
        export PLANT_BIND="${PLANT_BIND:-0.0.0.0:$(api_port)}"
        exec gunicorn -c /app/gunicorn.conf.py "$@" 'web:create_app()'
        ;;
    worker)
        require_secret DATABASE_URL REDIS_URL
        node="default@$(node_host)"
        record_role worker "$node"
        exec celery -q -A worker.app worker -Q default,maintenance -n "$node" \
            ${PLANT_WORKER_CONCURRENCY:+--concurrency "$PLANT_WORKER_CONCURRENCY"} "$@"
        ;;
    worker-audit)
        # Audit jobs are long: one at a time, and no prefetched message waits behind one.
        require_secret DATABASE_URL REDIS_URL
        node="audit@$(node_host)"
        record_role worker-audit "$node"
        exec celery -q -A worker.app worker -Q audit -n "$node" \
            --prefetch-multiplier 1 --concurrency 1 "$@"
        ;;
    beat)
        require_secret REDIS_URL
        record_role beat
        mkdir -p "$DATA_DIR"
        exec celery -q -A worker.app beat -s "$BEAT_SCHEDULE" "$@"
        ;;
    flower)
        # Flower reads FLOWER_BASIC_AUTH from the environment itself; passing it as an
        # argument would show the password to anyone who can list processes. Without it,
        # flower_conf.py (a Flower configuration file) takes Plant's PLANT_FLOWER_BASIC_AUTH,
        # or the file PLANT_FLOWER_BASIC_AUTH_FILE names (compose's secret).
        require_secret REDIS_URL
        if [ -n "${FLOWER_BASIC_AUTH:-}" ]; then
            no_placeholder FLOWER_BASIC_AUTH
        elif [ -n "${PLANT_FLOWER_BASIC_AUTH:-}${PLANT_FLOWER_BASIC_AUTH_FILE:-}" ]; then
            no_placeholder PLANT_FLOWER_BASIC_AUTH
            set -- --conf=/app/flower_conf.py "$@"
        else
            echo "plant-entrypoint: FLOWER_BASIC_AUTH (or PLANT_FLOWER_BASIC_AUTH_FILE, a file holding it) must be set for role '${ROLE}'" >&2
            exit 64
        fi
        record_role flower
        exec celery -A worker.app flower --address=0.0.0.0 --port="${PORT:-5555}" "$@"
        ;;
    migrate)
        require_secret DATABASE_URL
        no_placeholder PLANT_RUNTIME_ROLE_PASSWORD PLANT_ADMIN_API_KEY
        record_role migrate
        exec plant db upgrade "$@"
        ;;
    seed)
        require_secret DATABASE_URL
        record_role seed
        exec plant seed "$@"
        ;;
    seal-keys)
        # `plant signing-keys seal` for a deployment whose retired keys arrive on a read-only
        # volume (terraform/README.md, "Rotating the signing key"): it seals a copy of them,
        # then prints each new <kid>.seal.json as one line of JSON, to be deployed beside them.
        # The active key comes as PLANT_SIGNING_KEY or as the file PLANT_SIGNING_KEY_FILE names
        # (compose's /run/secrets, Cloud Run's secret volume, both read-only and not ours). The seal
        # takes a lock file beside the active key's file, so a file is copied into the work
        # directory (0600, ours, removed on exit) rather than read into the environment, which
        # `plant` and anything it starts would inherit.
        require_secret DATABASE_URL PLANT_SIGNING_KEY
        require PLANT_RETIRED_SIGNING_KEYS_DIR
        record_role seal-keys
        mounted="$PLANT_RETIRED_SIGNING_KEYS_DIR"
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        mkdir -p "$work/keys/retired"
        if [ -z "${PLANT_SIGNING_KEY:-}" ]; then
            if [ ! -f "$PLANT_SIGNING_KEY_FILE" ]; then  # cat would wait on a FIFO for good
                echo "plant-entrypoint: PLANT_SIGNING_KEY_FILE (${PLANT_SIGNING_KEY_FILE}) is not a regular file" >&2
                exit 64
            fi
            (umask 077 && cat "$PLANT_SIGNING_KEY_FILE" > "$work/keys/active.pem")
        fi
        if [ -d "$mounted" ]; then
            # `-exec ... +` fails when cp fails: a key left out would go unsealed.
            find -L "$mounted" -maxdepth 1 -type f \( -name '*.pem' -o -name '*.seal.json' \) \
                -exec cp -t "$work/keys/retired/" {} +
        fi
        PLANT_DATA_DIR="$work" PLANT_SIGNING_KEY_FILE="$work/keys/active.pem" \
            PLANT_RETIRED_SIGNING_KEYS_DIR="$work/keys/retired" plant signing-keys seal "$@"
        for seal in "$work"/keys/retired/*.seal.json; do
            [ -e "$seal" ] || continue
            [ -e "$mounted/${seal##*/}" ] && continue
            cat "$seal"
            echo
        done
        ;;
    healthcheck)
        healthcheck
        ;;
    *)
        exec "$ROLE" "$@"
        ;;
esac
