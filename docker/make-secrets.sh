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
# a URL it writes takes the password from the password's file when that exists. A new password is
# 48 hex digits (URL-safe: it goes into a URL). A deployment from before the secret files keeps its
# own: a value .env still holds (POSTGRES_PASSWORD, PLANT_RUNTIME_ROLE_PASSWORD, REDIS_PASSWORD,
# FLOWER_BASIC_AUTH, PLANT_ADMIN_API_KEY; never the placeholder change-me) is written instead of a
# new one; delete those lines from .env afterwards. The URLs take POSTGRES_USER, POSTGRES_DB and
# PLANT_RUNTIME_ROLE from .env: set them first. Each file is 0644 in a 0700 directory: the
# containers (uid 10001, postgres 999) must read it, and the directory keeps other users out.
set -eu

dir="${1:-secrets}"

from_env() {
    # from_env NAME: NAME's last value in ./.env, quotes and surrounding blanks dropped; else nothing.
    [ -f .env ] || return 0
    sed -n "s/^[[:space:]]*${1}[[:space:]]*=[[:space:]]*//p" .env | tail -n 1 \
        | sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/"
}

env_or() {
    # env_or NAME DEFAULT: .env's NAME, unless blank or the placeholder; else DEFAULT.
    value="$(from_env "$1")"
    case "$value" in
        "" | *change-me*) printf '%s' "$2" ;;
        *) printf '%s' "$value" ;;
    esac
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

write() {
    # write FILE VALUE: DIR/FILE holding VALUE and a newline, unless it exists.
    if [ -e "$dir/$1" ]; then
        echo "kept    $dir/$1"
        return
    fi
    (umask 077 && printf '%s\n' "$2" > "$dir/$1.new")
    chmod 644 "$dir/$1.new"
    mv "$dir/$1.new" "$dir/$1"
    echo "created $dir/$1"
}

mkdir -p "$dir/retired"
chmod 700 "$dir"

user="$(env_or POSTGRES_USER plant)"
database="$(env_or POSTGRES_DB plant)"
role="$(env_or PLANT_RUNTIME_ROLE plant_runtime)"
owner_password="$(secret postgres_password POSTGRES_PASSWORD)"
runtime_password="$(secret runtime_role_password PLANT_RUNTIME_ROLE_PASSWORD)"
redis_password="$(secret redis_password REDIS_PASSWORD)"

write postgres_password "$owner_password"
write database_url "postgresql+psycopg://${user}:${owner_password}@postgres:5432/${database}"
write runtime_role_password "$runtime_password"
write runtime_database_url "postgresql+psycopg://${role}:${runtime_password}@postgres:5432/${database}"
write redis_password "$redis_password"
write redis_url "redis://:${redis_password}@redis:6379/0"
write flower_basic_auth "$(env_or FLOWER_BASIC_AUTH "admin:$(random_hex)")"
write bootstrap_admin_key "$(env_or PLANT_ADMIN_API_KEY "plant_$(random_hex)")"
