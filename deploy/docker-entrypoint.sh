#!/bin/sh
# Entrypoint of deploy/Dockerfile: apply the database migrations, then run the given command.
# Migrations run before the worker because its repositories expect the tables to exist; yoyo takes a
# lock, so several workers starting together apply them once. Other commands (a shell, a one-off
# `python -m ...`) run as given, without touching the database.
set -eu

if [ "${1:-}" = "faust" ]; then
    python -m tools.migrate
fi

exec "$@"
