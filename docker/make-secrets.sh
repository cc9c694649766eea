#!/bin/sh
# Make the secret files docker-compose.yml mounts into the containers (compose `secrets:`, at
# /run/secrets/NAME; never in their environment, where `docker inspect`, /proc/PID/environ and
# every child process show it). Run it from the repository root once .env is filled in:
#
#   sh docker/make-secrets.sh [DIR]          # DIR: secrets (git and the image's build ignore it)
#
#   postgres_password      the schema owner's password (the postgres image's POSTGRES_PASSWORD_FILE)
#   database_url           the owner's URL, for migrate alone (DATABASE_URL_FILE)
#   runtime_role_password  the runtime role's password, which migrate sets (PLANT_RUNTIME_ROLE_PASSWORD_FILE)
#   runtime_database_url   the runtime role's URL, for api, worker, worker-audit and seed
#   redis_password         Redis's requirepass
#   redis_url              Redis's URL with it, for every Plant service (REDIS_URL_FILE)
#   flower_basic_auth      user:password for Flower (PLANT_FLOWER_BASIC_AUTH_FILE)
#   bootstrap_admin_key    the first admin API key, which migrate makes live (PLANT_ADMIN_API_KEY_FILE)
#
# A file that exists is kept as it is: the script never changes a password a deployment holds, and
# a URL it writes takes the password from the password's file when that exists. One of these paths
# that is there but is not a regular file holding something (such as the empty directory some
# versions of compose leave at the path of a secret file that was missing) stops the script, named,
# before it writes anything: remove it and run the script again. A new password is 48 hex digits.
# A deployment from before the secret files keeps its own: a value .env still holds
# (POSTGRES_PASSWORD, PLANT_RUNTIME_ROLE_PASSWORD, REDIS_PASSWORD, FLOWER_BASIC_AUTH,
# PLANT_ADMIN_API_KEY; never the placeholder change-me) is written instead of a new one; delete
# those lines from .env afterwards. The URLs take POSTGRES_USER, POSTGRES_DB and PLANT_RUNTIME_ROLE
# from .env (set them first), each name and password percent-encoded in them. .env is read one line
# a value, the last for a name counting: `export ` before the name is allowed, a value in single
# quotes is taken as written, one in double quotes with \" and \\ unescaped, and an unquoted one
# ends before a blank followed by # (a comment). That is a part of what compose reads: a value it
# would read otherwise is refused, naming its variable (never its value), before anything is
# written: a $ (compose interpolates $VAR and ${VAR}) or a backslash in an unquoted or double-quoted
# value (but the \" and \\ above), and \' in single quotes. (An old password such as pa$word, which
# compose read as pa, is refused: put right its .env line, or write its secret file yourself.) No
# value spans lines. Each file is 0644 in a 0700 directory: the containers (uid 10001, postgres 999)
# must read it, and the directory keeps other users out.
set -eu

dir="${1:-secrets}"
files="postgres_password database_url runtime_role_password runtime_database_url redis_password redis_url
flower_basic_auth bootstrap_admin_key"

from_env() {
    # from_env NAME: NAME's last value in ./.env (as above), else nothing; an unclosed quote, or a
    # value compose would read otherwise (a $, an escape not handled here), fails.
    [ -f .env ] || return 0
    awk -v name="$1" '
        {
            line = $0
            sub(/\r$/, "", line)
            sub(/^[ \t]+/, "", line)
            sub(/^export[ \t]+/, "", line)
            eq = index(line, "=")
            key = substr(line, 1, eq - 1)
            sub(/[ \t]+$/, "", key)
            if (eq == 0 || key != name) next
            raw = substr(line, eq + 1)
            text = raw
            sub(/^[ \t]+/, "", text)
            quote = substr(text, 1, 1)
            bad = 0  # the line number of a value compose reads otherwise (a later line may replace it)
            if (quote != "\"" && quote != "\047") {
                sub(/[ \t]+#.*$/, "", raw)
                sub(/^[ \t]+/, "", raw)
                sub(/[ \t]+$/, "", raw)
                value = raw
                if (index(value, "$") || index(value, "\\")) { bad = NR; why = "holds a $ or a backslash, which compose interprets" }
                next
            }
            value = ""
            for (i = 2; i <= length(text); i++) {
                c = substr(text, i, 1)
                after = substr(text, i + 1, 1)
                if (quote == "\047" && c == "\\" && after == quote) { bad = NR; why = "holds \\\047, which compose reads as a quote" }
                if (c == quote) break
                if (quote == "\"" && c == "$") { bad = NR; why = "holds a $, which compose interpolates" }
                if (quote == "\"" && c == "\\") {
                    if (after != "\"" && after != "\\") { bad = NR; why = "holds a backslash escape other than \\\" and \\\\" }
                    c = after
                    i++
                }
                value = value c
            }
            if (i > length(text)) {
                printf "make-secrets.sh: .env line %d: the value of %s has no closing %s\n", NR, name, quote > "/dev/stderr"
                unclosed = 1
                exit 1
            }
        }
        END {
            if (unclosed) exit 1
            if (bad) {
                printf "make-secrets.sh: .env line %d: the value of %s %s (this script reads it as written):" \
                       " write it in single quotes without \\\047, or write its secret file yourself\n", bad, name, why > "/dev/stderr"
                exit 1
            }
            printf "%s", value
        }
    ' .env
}

env_or() {
    # env_or NAME DEFAULT: .env's NAME, unless blank or the placeholder; else DEFAULT.
    value="$(from_env "$1")" || exit 1
    case "$value" in
        "" | *change-me*) printf '%s' "$2" ;;
        *) printf '%s' "$value" ;;
    esac
}

url_quote() {
    # url_quote TEXT: TEXT with every byte but A-Z a-z 0-9 - . _ ~ percent-encoded, as a URL's user
    # or password (or database) must be: a .env password holding @, # or / broke the URL. Clients decode it.
    printf '%s' "$1" | LC_ALL=C awk '
        BEGIN { for (i = 1; i < 256; i++) code[sprintf("%c", i)] = i }
        {
            for (i = 1; i <= length($0); i++) {
                c = substr($0, i, 1)
                out = out (c ~ /[A-Za-z0-9._~-]/ ? c : sprintf("%%%02X", code[c]))
            }
        }
        END { printf "%s", out }
    '
}

random_hex() {
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

secret() {
    # secret FILE NAME: what DIR/FILE holds, else .env's NAME, else a new random password.
    if [ -f "$dir/$1" ]; then
        cat "$dir/$1"
    else
        env_or "$2" "$(random_hex)"
    fi
}

refuse_what_is_not_a_secret_file() {
    # Each path of $files that is there must be a regular file holding something: secret() took a
    # directory for a missing file, and a new password then went into a URL beside the kept one.
    status=0
    for name in $files; do
        path="$dir/$name"
        if [ -f "$path" ] && grep -q '[^[:space:]]' "$path"; then
            continue
        elif [ -f "$path" ]; then
            echo "make-secrets.sh: $path is empty: write its secret into it, or remove it for a new one" >&2
            status=1
        elif [ -e "$path" ] || [ -L "$path" ]; then
            echo "make-secrets.sh: $path is there but is not a regular file (a directory compose made for" \
                 "a secret file that was missing?): remove it and run this again" >&2
            status=1
        fi
    done
    return "$status"
}

write() {
    # write FILE VALUE: DIR/FILE holding VALUE and a newline, unless it exists.
    if [ -f "$dir/$1" ]; then
        echo "kept    $dir/$1"
        return
    fi
    (umask 077 && printf '%s\n' "$2" > "$dir/$1.new")
    chmod 644 "$dir/$1.new"
    mv "$dir/$1.new" "$dir/$1"
    echo "created $dir/$1"
}

refuse_what_is_not_a_secret_file || exit 1

# Each value in a variable first: a failure inside "$(...)" given as an argument would go unnoticed.
user="$(env_or POSTGRES_USER plant)"
database="$(env_or POSTGRES_DB plant)"
role="$(env_or PLANT_RUNTIME_ROLE plant_runtime)"
owner_password="$(secret postgres_password POSTGRES_PASSWORD)"
runtime_password="$(secret runtime_role_password PLANT_RUNTIME_ROLE_PASSWORD)"
redis_password="$(secret redis_password REDIS_PASSWORD)"
flower_basic_auth="$(env_or FLOWER_BASIC_AUTH "admin:$(random_hex)")"
admin_key="$(env_or PLANT_ADMIN_API_KEY "plant_$(random_hex)")"

owner_url="postgresql+psycopg://$(url_quote "$user"):$(url_quote "$owner_password")@postgres:5432/$(url_quote "$database")"
runtime_url="postgresql+psycopg://$(url_quote "$role"):$(url_quote "$runtime_password")@postgres:5432/$(url_quote "$database")"
redis_url="redis://:$(url_quote "$redis_password")@redis:6379/0"

mkdir -p "$dir/retired"
chmod 700 "$dir"
write postgres_password "$owner_password"
write database_url "$owner_url"
write runtime_role_password "$runtime_password"
write runtime_database_url "$runtime_url"
write redis_password "$redis_password"
write redis_url "$redis_url"
write flower_basic_auth "$flower_basic_auth"
write bootstrap_admin_key "$admin_key"
