#!/usr/bin/env bash
# Drift check for @whatsched/client: regenerate src/events.ts and docs/events.md (from the events
# catalog, contracts/events.json), src/database.types.ts (postgres-meta over a freshly migrated
# database) and src/api.types.ts (openapi-typescript over the API's OpenAPI document, built
# in-process) and fail with a diff when they differ from the committed files.
# The database: DATABASE_URL's server when set (CI: the machine's PostgreSQL 15), else the embedded one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f node_modules/.installed ] || [ package-lock.json -nt node_modules/.installed ]; then
  PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
  touch node_modules/.installed
fi
exec node scripts/generate.mjs --check
