#!/usr/bin/env bash
# serve.sh PORT GGUF_PATH [extra llama-server flags...]: exec llama-server on 127.0.0.1:PORT in the foreground.
# Fair config: 2 threads, 32 slots sharing one unified KV cache, continuous batching, and a context of 16384
# tokens: enough for 32 concurrent requests of 256 + 128 tokens (12288) and, with the unified cache, for a single
# 2,000-token prompt. Ready when GET /v1/models answers 200.
set -euo pipefail

PEER_NAME=llama-server
NUM_SLOTS=32
CONTEXT_TOKENS=16384
# shellcheck source=../_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../_lib.sh"

peer_check_serve_args "$@"
port="$1"
gguf_path="$2"
shift 2
server_bin="$(peers_root)/$PEER_NAME/bin/llama-server"
[[ -x "$server_bin" ]] || peer_die "$server_bin not found: run bench/peers/$PEER_NAME/install.sh first"
num_threads="$(peer_num_threads)"

exec "$server_bin" \
    -m "$gguf_path" \
    --host 127.0.0.1 --port "$port" \
    -t "$num_threads" -tb "$num_threads" \
    -np "$NUM_SLOTS" -kvu -cb \
    -c "$CONTEXT_TOKENS" \
    "$@"
