#!/usr/bin/env bash
# Proves the supabase CLI and our runner agree: the pinned CLI pushes supabase/migrations into a
# fresh bootstrapped database, then `whatsched migrate` finds nothing pending. Then Supabase's own
# linter (`supabase db lint`, plpgsql_check over every PL/pgSQL body) must report no warning, so a
# broken function body fails here before any test reaches it. The lint needs the server's
# plpgsql_check extension (Debian: postgresql-15-plpgsql-check); without it the lint is skipped,
# loudly, unless LINT_REQUIRED=1.
# Usage: scripts/check_supabase_cli.sh [admin-url]   (default: the local PostgreSQL on 5432)
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-postgresql://postgres@127.0.0.1:5432/postgres}
cli_dir=${SUPABASE_CLI_DIR:-.data/supabase-cli}
if [ ! -x "$cli_dir/node_modules/.bin/supabase" ]; then
  mkdir -p "$cli_dir"
  (cd "$cli_dir" && npm init -y >/dev/null && npm i -E supabase@2.117.0 --no-audit --no-fund --loglevel=error)
fi
supabase="$cli_dir/node_modules/.bin/supabase"
db="whatsched_cli_$(date +%s)_$$"
base=${server%/*}
url="$base/$db"
psql "$server" -qc "create database $db"
trap 'psql "$server" -qc "drop database if exists $db with (force)"' EXIT

DATABASE_URL="$url" .venv/bin/whatsched migrate --bootstrap-only
"$supabase" db push --db-url "$url?sslmode=disable" --yes
"$supabase" migration list --db-url "$url?sslmode=disable"
out=$(DATABASE_URL="$url" .venv/bin/whatsched migrate)
echo "$out"
if [ "$out" != "nothing to apply; the database is up to date" ]; then
  echo "FAIL: whatsched migrate found pending migrations after supabase db push" >&2
  exit 1
fi
status=$(DATABASE_URL="$url" .venv/bin/whatsched migrate --status)
if echo "$status" | grep -q pending; then
  echo "FAIL: migrations pending after supabase db push:" >&2
  echo "$status" >&2
  exit 1
fi
echo "supabase CLI compatibility: OK ($(echo "$status" | wc -l) migrations)"

if psql "$url" -qc "create extension if not exists plpgsql_check" 2>/dev/null; then
  "$supabase" db lint --db-url "$url?sslmode=disable" --schema public,private --level warning --fail-on warning
  echo "supabase db lint: OK (no warning in public, private)"
elif [ "${LINT_REQUIRED:-0}" = 1 ]; then
  echo "FAIL: plpgsql_check is not installed on this server; cannot run supabase db lint" >&2
  exit 1
else
  echo "SKIPPED supabase db lint: plpgsql_check is not installed on this server" >&2
fi
