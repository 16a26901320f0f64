#!/usr/bin/env bash
# Build llama.cpp's `llama-server` (CPU, Release) from the llama.cpp sources vendored in the llama-cpp-python
# sdist, so this peer and the `llama-cpp-python` peer run the same llama.cpp. Idempotent: a second run with the
# same pin is a no-op. Layout: $YAIE_PEERS_DIR/llama-server/{venv,src,build,bin/llama-server}.
set -euo pipefail

PEER_NAME=llama-server
LLAMA_CPP_PYTHON_VERSION=0.3.36  # vendors llama.cpp commit 0c1e570
BUILD_JOBS="${YAIE_PEER_BUILD_JOBS:-2}"
# shellcheck source=../_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../_lib.sh"

peer_dir="$(peers_root)/$PEER_NAME"
stamp="llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION no-amx"
if peer_is_installed "$peer_dir" "$stamp" && [[ -x "$peer_dir/bin/llama-server" ]]; then
    peer_log "already installed ($stamp): $peer_dir/bin/llama-server"
    exit 0
fi
mkdir -p "$peer_dir"
rm -f "$peer_dir/.installed"

peer_make_venv "$peer_dir/venv"
cmake_bin="$(peer_cmake "$peer_dir/venv")"

sdist_dir="$peer_dir/src"
source_dir="$sdist_dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"
if [[ ! -f "$source_dir/CMakeLists.txt" ]]; then
    rm -rf "$sdist_dir"
    mkdir -p "$sdist_dir"
    peer_log "downloading the llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION sdist"
    "$peer_dir/venv/bin/pip" download --quiet --no-binary :all: --no-deps \
        "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$sdist_dir" \
        || peer_die "pip download llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION failed"
    tar -xzf "$sdist_dir/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$sdist_dir" \
        || peer_die "could not unpack the sdist in $sdist_dir"
    [[ -f "$source_dir/CMakeLists.txt" ]] || peer_die "the sdist has no vendor/llama.cpp at $source_dir"
fi

# No UI (the prebuilt one would be downloaded from the Hugging Face hub; npm is not wanted), no HTTPS, one
# static binary tuned for this CPU (GGML_NATIVE), but without ggml's AMX backend: on CPUs with AMX,
# -march=native compiles it in, and in this llama.cpp it crashes (SIGSEGV in ggml_backend_amx_mul_mat at the
# first matmul of SmolLM2's Q4_1 GGUF, seen on the 2026-12 dev VM, an Intel Xeon with AMX). Undefining its
# feature macros keeps every other native kernel (AVX-512, VNNI); on CPUs without AMX it changes nothing.
build_dir="$peer_dir/build"
peer_log "configuring ($cmake_bin) -> $build_dir"
"$cmake_bin" -S "$source_dir" -B "$build_dir" \
    -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF \
    -DGGML_NATIVE=ON \
    "-DCMAKE_C_FLAGS=-U__AMX_TILE__ -U__AMX_INT8__ -U__AMX_BF16__" \
    "-DCMAKE_CXX_FLAGS=-U__AMX_TILE__ -U__AMX_INT8__ -U__AMX_BF16__" \
    -DLLAMA_BUILD_SERVER=ON \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF \
    -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_OPENSSL=OFF \
    >"$peer_dir/configure.log" 2>&1 \
    || { tail -30 "$peer_dir/configure.log" >&2; peer_die "cmake configure failed (log: $peer_dir/configure.log)"; }

peer_log "building target llama-server with -j$BUILD_JOBS (about 8 min on 2 cores; log: $peer_dir/build.log)"
"$cmake_bin" --build "$build_dir" --config Release --target llama-server -j "$BUILD_JOBS" \
    >"$peer_dir/build.log" 2>&1 \
    || { tail -30 "$peer_dir/build.log" >&2; peer_die "build failed (log: $peer_dir/build.log)"; }

mkdir -p "$peer_dir/bin"
install -m 0755 "$build_dir/bin/llama-server" "$peer_dir/bin/llama-server"
"$peer_dir/bin/llama-server" --version >&2 || peer_die "the built llama-server does not run"
peer_mark_installed "$peer_dir" "$stamp"
peer_log "installed: $peer_dir/bin/llama-server"
