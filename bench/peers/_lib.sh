# Shared helpers for bench/peers/*/install.sh and serve.sh. Source it; it defines functions only.
# Every peer lives in ${YAIE_PEERS_DIR:-$HOME/.cache/yaie/peers}/<name>/ with its own venv; nothing here
# writes to the repository or to its .venv.

peers_root() {
    printf '%s\n' "${YAIE_PEERS_DIR:-$HOME/.cache/yaie/peers}"
}

peer_log() {
    printf '[%s] %s\n' "${PEER_NAME:-peer}" "$*" >&2
}

peer_die() {
    printf '[%s] ERROR: %s\n' "${PEER_NAME:-peer}" "$*" >&2
    exit 1
}

# The interpreter for a peer's venv: $YAIE_PEER_PYTHON, else python3.11, else python3.
peer_base_python() {
    local candidate
    for candidate in "${YAIE_PEER_PYTHON:-}" python3.11 python3; do
        if [[ -n "$candidate" ]] && command -v "$candidate" >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    peer_die "no python3.11 or python3 on PATH (set YAIE_PEER_PYTHON)"
}

# peer_make_venv DIR: create a venv at DIR (kept if it already works) with an up-to-date pip.
peer_make_venv() {
    local venv_dir="$1"
    if [[ ! -x "$venv_dir/bin/python" ]] || ! "$venv_dir/bin/python" -c 'import pip' >/dev/null 2>&1; then
        rm -rf "$venv_dir"
        peer_log "creating venv $venv_dir"
        "$(peer_base_python)" -m venv "$venv_dir" || peer_die "could not create venv $venv_dir"
    fi
}

# peer_is_installed DIR STAMP: true when DIR/.installed holds exactly STAMP (the pinned version string).
peer_is_installed() {
    [[ -f "$1/.installed" ]] && [[ "$(cat "$1/.installed")" == "$2" ]]
}

peer_mark_installed() {
    printf '%s' "$2" >"$1/.installed"
}

# peer_check_serve_args PORT GGUF_PATH [EXTRA...]: validate serve.sh's two positional arguments (anything after
# them is passed through to the server).
peer_check_serve_args() {
    if [[ $# -lt 2 ]]; then
        peer_die "usage: serve.sh PORT GGUF_PATH [extra server flags...]"
    fi
    [[ "$1" =~ ^[0-9]+$ ]] && (($1 >= 1 && $1 <= 65535)) || peer_die "PORT must be 1..65535, got '$1'"
    [[ -f "$2" ]] || peer_die "GGUF_PATH does not exist: $2"
}

# The number of CPU threads every peer is configured with (the fair comparison uses 2).
peer_num_threads() {
    local num_threads="${YAIE_PEER_NUM_THREADS:-2}"
    [[ "$num_threads" =~ ^[1-9][0-9]*$ ]] || peer_die "YAIE_PEER_NUM_THREADS must be a positive integer, got '$num_threads'"
    printf '%s\n' "$num_threads"
}

# peer_cmake: a cmake >= 3.21 on PATH, else one pip-installed into the given venv.
peer_cmake() {
    local venv_dir="$1" version
    if command -v cmake >/dev/null 2>&1; then
        version="$(cmake --version | sed -n 's/^cmake version \([0-9]*\.[0-9]*\).*/\1/p')"
        if [[ "$(printf '3.21\n%s\n' "$version" | sort -V | head -1)" == "3.21" ]]; then
            command -v cmake
            return 0
        fi
    fi
    if [[ ! -x "$venv_dir/bin/cmake" ]]; then
        peer_log "no cmake >= 3.21 on PATH: installing cmake into $venv_dir"
        "$venv_dir/bin/pip" install --quiet 'cmake>=3.21' >&2 || peer_die "pip install cmake failed"
    fi
    printf '%s\n' "$venv_dir/bin/cmake"
}
