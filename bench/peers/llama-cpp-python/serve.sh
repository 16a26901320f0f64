#!/usr/bin/env bash
# serve.sh PORT GGUF_PATH [extra llama_cpp.server flags...]: exec llama-cpp-python's OpenAI server on
# 127.0.0.1:PORT in the foreground. It runs one request at a time (no continuous batching; requests queue behind
# a lock), so the context only has to hold one 2,000-token prompt plus its output. `--interrupt_requests False`
# stops a new request from cancelling the one streaming. Ready when GET /v1/models answers 200.
set -euo pipefail

PEER_NAME=llama-cpp-python
CONTEXT_TOKENS=4096
# shellcheck source=../_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../_lib.sh"

peer_check_serve_args "$@"
port="$1"
gguf_path="$2"
shift 2
venv_python="$(peers_root)/$PEER_NAME/venv/bin/python"
[[ -x "$venv_python" ]] || peer_die "$venv_python not found: run bench/peers/$PEER_NAME/install.sh first"
num_threads="$(peer_num_threads)"

exec "$venv_python" -m llama_cpp.server \
    --model "$gguf_path" \
    --host 127.0.0.1 --port "$port" \
    --n_threads "$num_threads" --n_threads_batch "$num_threads" \
    --n_ctx "$CONTEXT_TOKENS" \
    --interrupt_requests False \
    "$@"
