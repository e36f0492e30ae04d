#!/usr/bin/env bash
# The embedded demo: local Postgres + Redis, a real Triton (CPU, PyTriton) with demo models,
# migrations, a demo tenant and key, then the gateway in the foreground.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
PORT="${PORT:-8000}"

if [ ! -f .env ]; then
  # Secrets come from configuration: the demo makes its own, once.
  {
    echo "MAAS_SECRET_KEY=$($BIN/python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    echo "MAAS_TRITON_ACCESS_TOKEN=$($BIN/python -c 'import secrets; print(secrets.token_urlsafe(24))')"
  } > .env
  chmod 600 .env
fi
set -a; . ./.env; set +a
export MAAS_DATABASE_URL="${MAAS_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/maas}"

psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname = 'maas'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -qc "create database maas"
$BIN/maas db upgrade

mkdir -p .run
$BIN/maas demo-model --grpc-port 8001 --http-port 8010 --metrics-port 8012 > .run/triton.log 2>&1 &
TRITON_PID=$!
trap 'kill "$TRITON_PID" 2>/dev/null || true; wait "$TRITON_PID" 2>/dev/null || true' EXIT
echo "starting Triton (pid $TRITON_PID; log .run/triton.log) ..."
for _ in $(seq 1 240); do
  grep -q '^READY' .run/triton.log 2>/dev/null && break
  kill -0 "$TRITON_PID" 2>/dev/null || { echo "Triton failed to start:"; tail -n 30 .run/triton.log; exit 1; }
  sleep 0.5
done
grep -q '^READY' .run/triton.log || { echo "Triton did not become ready"; exit 1; }

$BIN/maas models publish add_sub --gpu-share 0.5 >/dev/null
$BIN/maas models publish text_length --gpu-share 0.25 >/dev/null
$BIN/maas tenants list --json | grep -q '"name": "demo"' || $BIN/maas tenants create demo --plan standard >/dev/null
KEY=$($BIN/maas keys create demo --name "demo $(date -u +%FT%TZ)" --json | $BIN/python -c 'import json,sys; print(json.load(sys.stdin)["secret"])')

cat <<MSG

  Gateway on http://127.0.0.1:$PORT  (Ctrl-C stops it and Triton)
  Demo tenant "demo", API key (shown once): $KEY

  curl -s http://127.0.0.1:$PORT/v2/models/add_sub/infer \\
    -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
    -d '{"inputs":[{"name":"INPUT0","shape":[1,3],"datatype":"FP32","data":[1,2,3]},{"name":"INPUT1","shape":[1,3],"datatype":"FP32","data":[10,20,30]}]}'

  curl -s http://127.0.0.1:$PORT/v1/usage -H "Authorization: Bearer $KEY"

MSG
$BIN/maas serve --port "$PORT" --workers "${WORKERS:-2}"
