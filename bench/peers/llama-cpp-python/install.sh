#!/usr/bin/env bash
# Install llama-cpp-python[server] (compiled from its sdist for this CPU) into its own venv. The pin matches
# llama-server's, so both peers run the same vendored llama.cpp. Idempotent: a second run with the same pin is a
# no-op. Layout: $YAIE_PEERS_DIR/llama-cpp-python/venv.
set -euo pipefail

PEER_NAME=llama-cpp-python
LLAMA_CPP_PYTHON_VERSION=0.3.36  # vendors llama.cpp commit 0c1e570 (same as llama-server)
BUILD_JOBS="${YAIE_PEER_BUILD_JOBS:-2}"
# shellcheck source=../_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../_lib.sh"

peer_dir="$(peers_root)/$PEER_NAME"
venv_dir="$peer_dir/venv"
stamp="llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
if peer_is_installed "$peer_dir" "$stamp" && [[ -x "$venv_dir/bin/python" ]]; then
    peer_log "already installed ($stamp): $venv_dir"
    exit 0
fi
mkdir -p "$peer_dir"
rm -f "$peer_dir/.installed"
peer_make_venv "$venv_dir"
cmake_bin="$(peer_cmake "$venv_dir")"

# CPU only, tuned for this CPU; only the libraries the bindings load (no tools, tests, HTTPS, or the multimodal
# library, which the text server never loads).
cmake_args="-DGGML_NATIVE=ON -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF"
cmake_args+=" -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
cmake_args+=" -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
peer_log "pip install llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION, compiling llama.cpp with -j$BUILD_JOBS"
peer_log "(about 5 min on 2 cores; log: $peer_dir/pip.log)"
PATH="$(dirname "$cmake_bin"):$PATH" \
    CMAKE_ARGS="$cmake_args" \
    CMAKE_BUILD_PARALLEL_LEVEL="$BUILD_JOBS" \
    "$venv_dir/bin/pip" install --verbose --no-binary llama-cpp-python \
    "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" >"$peer_dir/pip.log" 2>&1 \
    || { tail -30 "$peer_dir/pip.log" >&2; peer_die "pip install llama-cpp-python failed (log: $peer_dir/pip.log)"; }

"$venv_dir/bin/python" -c 'import llama_cpp, llama_cpp.server.app; print("llama_cpp", llama_cpp.__version__)' >&2 \
    || peer_die "llama_cpp does not import in $venv_dir"
peer_mark_installed "$peer_dir" "$stamp"
peer_log "installed: $venv_dir"
