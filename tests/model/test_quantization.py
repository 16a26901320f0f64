"""Quantization at the runner's edge: layer accuracy, which layers are swapped, real answers from the default model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from yaie import LLM, SamplingParams
from yaie.layers.norm import RMSNorm
from yaie.runner.quantization import (
    Int4Linear,
    Int8Linear,
    Q8BlockLinear,
    enable_amx,
    load_int8_gemm_kernel,
    load_q8_kernel,
    quantize_int8,
    quantize_model,
)


def test_int8_linear_is_close_to_float() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, 384, bias=True)
    quantized = Int8Linear(linear)
    for num_tokens in (1, 7, 64):
        x = torch.randn(num_tokens, 256)
        ref = linear(x)
        rel_err = ((quantized(x) - ref).norm() / ref.norm()).item()
        assert rel_err < 0.015


def _int8_reference(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """W8A8 as plain PyTorch: per-channel weight codes, per-token activation codes, exact integer products."""
    weight = linear.weight.detach()
    w_scale = weight.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127  # [out, 1]
    w_q = torch.round(weight / w_scale).to(torch.int8)
    x_scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127  # [T, 1]
    x_q = torch.round(x * x_scale.reciprocal()).to(torch.int8)
    out = torch._int_mm(x_q, w_q.t().contiguous()).float() * x_scale * w_scale.t()
    return out if linear.bias is None else out + linear.bias.detach()


# 384, 400, 432: 24, 25 and 27 channel tiles (every tail of the AMX panels); 390: not a multiple of 16, so
# torch._int_mm takes it
@pytest.mark.parametrize("out_features", [384, 400, 432, 390])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_kernels_match_the_pytorch_expression(out_features: int, bias: bool) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(256, out_features, bias=bias)
    quantized = Int8Linear(linear)
    assert quantized._rows is not None  # gcc is part of the supported setup: the kernel must build
    vnni = load_int8_gemm_kernel() is not None
    assert (quantized._gemm is not None) == (vnni and out_features % 16 == 0)
    assert quantized.weight_t.numel() == (0 if quantized._gemm is not None else 256 * out_features)
    for num_tokens in (0, 1, 7, 9, 16, 17, 33, 64, 300):  # VNNI's 8-row tails; AMX's 16-row blocks, pairs, overlap
        x = torch.randn(num_tokens, 256) * torch.rand(num_tokens, 1) * 10
        torch.testing.assert_close(quantized(x), _int8_reference(linear, x), rtol=1e-5, atol=1e-5)


def test_int8_linear_with_a_fused_input_norm_matches_norm_then_linear() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(256, eps=1e-5)
    norm.weight.data = torch.rand(256) + 0.5
    linear = nn.Linear(256, 384, bias=False)
    fused, plain = Int8Linear(linear), Int8Linear(linear)
    fused.fuse_input_norm(norm)
    fallback = Int8Linear(linear, cpu_kernels=False)  # the PyTorch path (CUDA, no compiler)
    fallback.fuse_input_norm(norm)
    assert fused._rows is not None and fallback._rows is None and fallback._gemm is None
    for num_tokens in (1, 7, 64):
        x = torch.randn(num_tokens, 256) * torch.rand(num_tokens, 1) * 10
        expected = plain(norm(x))
        got = fused(x)  # the norm inside the C quantization pass
        assert ((got - expected).norm() / expected.norm()).item() < 1e-4
        torch.testing.assert_close(fallback(x), expected, rtol=1e-5, atol=1e-5)


def test_int4_linear_reproduces_weights_already_on_a_4bit_grid() -> None:
    """Weights that are Q4_1-representable (16 levels per group of 32) re-quantize exactly: what remains is the
    bfloat16 rounding of the activations."""
    torch.manual_seed(0)
    num_out, num_in = 96, 128
    levels = torch.randint(0, 16, (num_out, num_in // 32, 32)).float()
    levels[..., 0], levels[..., 1] = 0, 15  # every group spans the full range, as llama.cpp's quantizer makes it
    scale, low = torch.rand(num_out, num_in // 32, 1) * 0.01 + 1e-3, torch.randn(num_out, num_in // 32, 1) * 0.05
    linear = nn.Linear(num_in, num_out, bias=True)
    linear.weight.data = (levels * scale + low).reshape(num_out, num_in)
    quantized = Int4Linear(linear)
    for num_tokens in (1, 5, 40):
        x = torch.randn(num_tokens, num_in)
        ref = linear(x)
        assert ((quantized(x) - ref).norm() / ref.norm()).item() < 0.01


def test_int4_linear_rejects_shapes_the_kernel_cannot_take() -> None:
    with pytest.raises(ValueError, match="group_size"):
        Int4Linear(nn.Linear(48, 64))


def test_int8_swaps_every_linear_and_the_lm_head(tiny_llama_dir: Path) -> None:
    llm = LLM(str(tiny_llama_dir), num_blocks=32, quantization="int8")
    model = llm.engine.runner.model
    assert quantize_int8(model) == 0  # already done at load: nothing float is left
    assert isinstance(model.layers[0].self_attn.qkv_proj, Int8Linear)
    assert isinstance(model.layers[0].mlp.down_proj, Int8Linear)
    assert isinstance(model.lm_head, Int8Linear)
    for layer in model.layers:  # each RMSNorm now runs inside the quantization pass of the projection it feeds
        assert isinstance(layer.input_layernorm, nn.Identity) and isinstance(layer.post_attention_layernorm, nn.Identity)
        assert layer.self_attn.qkv_proj.input_norm is not None and layer.mlp.gate_up_proj.input_norm is not None


def test_int8_builds_an_lm_head_from_tied_embeddings(tiny_qwen2_dir: Path) -> None:
    llm = LLM(str(tiny_qwen2_dir), num_blocks=32, quantization="int8")
    model = llm.engine.runner.model
    assert isinstance(model.lm_head, Int8Linear)
    assert isinstance(model.embed_tokens, nn.Embedding)  # the lookup table stays float
    out = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))[0]
    assert len(out.outputs[0].token_ids) == 4


def test_amx_and_vnni_matmuls_agree() -> None:
    """Both sum int8 products exactly in int32 and share the rescale; only the order of the rescale's two
    multiplications may differ (measured: <= 1 ulp). A wrong tile layout, row block or channel tail is O(1).
    AMX never switches on without the CPU feature (with it, the OS must also grant the tile state: Linux 5.16+)."""
    lib = load_int8_gemm_kernel()
    if lib is None:
        pytest.skip("no AVX-512 VNNI: int8 runs on torch._int_mm")
    has_amx = "amx_int8" in Path("/proc/cpuinfo").read_text().split()
    torch.manual_seed(0)
    quantized = Int8Linear(nn.Linear(576, 432, bias=True))
    try:
        for num_tokens in (5, 15, 16, 31, 32, 47, 130):
            x = torch.randn(num_tokens, 576) * 4
            assert enable_amx(lib, False) is False
            vnni = quantized(x)
            assert enable_amx(lib) <= has_amx
            torch.testing.assert_close(quantized(x), vnni, rtol=1e-6, atol=1e-5)
    finally:
        enable_amx(lib)


def test_q8_block_linear_holds_q8_0_weights_exactly() -> None:
    kernel = load_q8_kernel()
    assert kernel is not None  # gcc is part of the supported setup: the kernel must build
    torch.manual_seed(0)
    linear = nn.Linear(96, 200, bias=False)
    blocks = linear.weight.data.reshape(200, 3, 32)
    scale = blocks.abs().amax(-1, keepdim=True) / 127
    linear.weight.data = (torch.round(blocks / scale) * scale).reshape(200, 96)  # as GGUF Q8_0 stores them
    quantized = Q8BlockLinear(linear, kernel)
    for num_tokens in (1, 3, 70):  # 70 > the kernel's 64-token tile
        x = torch.randn(num_tokens, 96)
        torch.testing.assert_close(quantized(x), linear(x), rtol=1e-5, atol=1e-5)


def test_int4_swaps_decoder_linears_and_uses_a_q8_lm_head(tiny_llama_dir: Path) -> None:
    llm = LLM(str(tiny_llama_dir), num_blocks=32, quantization="int4")
    model = llm.engine.runner.model
    assert isinstance(model.layers[0].self_attn.qkv_proj, Int4Linear)
    assert isinstance(model.layers[1].mlp.gate_up_proj, Int4Linear)
    assert isinstance(model.lm_head, Q8BlockLinear)
    with pytest.raises(ValueError, match="quantization"):
        quantize_model(model, "int3")


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_quantized_default_model_answers_correctly(scheme: str) -> None:
    llm = LLM(None, quantization=scheme, max_num_seqs=4)
    # float32's first token leads by 1.5 nats here. Not "What is the capital of France?" alone: there float32
    # itself hesitates between "The" (-1.88) and "L" (-1.97), so any rounding change may flip the answer to French.
    out = llm.chat([{"role": "user", "content": "What is the capital of France? Answer in one word."}],
                   SamplingParams(temperature=0, max_tokens=64))[0].outputs[0]
    assert "Paris" in out.text
    assert out.finish_reason == "stop"


def test_int4_default_model_matches_float_greedy() -> None:
    """The GGUF's decoder weights are Q4_1: int4 holds exactly them, so greedy text stays float32's."""
    messages = [{"role": "user", "content": "Name three colours."}]
    params = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    texts = [LLM(None, quantization=q, max_num_seqs=2).chat(messages, params)[0].outputs[0].token_ids
             for q in ("none", "int4")]
    assert texts[0] == texts[1]


@pytest.mark.parametrize("bias", [True, False])
def test_int8_argmax_matches_the_largest_output(bias: bool) -> None:
    """The argmax mode never writes the outputs; it must pick what forward(x).max(-1) picks, first index on ties,
    for every row count (VNNI rows, AMX blocks, pairs and overlapping tails) and across the threads' columns."""
    torch.manual_seed(0)
    linear = nn.Linear(128, 4096, bias=bias)
    linear.weight.data[100] = linear.weight.data[3000]  # two columns that always tie: the first must win
    if bias:
        linear.bias.data[100] = linear.bias.data[3000]
    quantized = Int8Linear(linear)
    for num_tokens in (1, 3, 5, 16, 17, 33, 70):
        x = torch.randn(num_tokens, 128)
        x[0] = linear.weight.data[100] * 50  # row 0's best output is the tied pair
        want = quantized(x).max(dim=-1).indices
        assert torch.equal(quantized.argmax(x), want), num_tokens
        assert int(want[0]) == 100


def test_greedy_int8_steps_skip_the_logits_but_pick_the_same_tokens(tiny_llama_d64_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    llm = LLM(str(tiny_llama_d64_dir), num_blocks=64, quantization="int8")
    lm_head = llm.engine.runner.model.lm_head
    assert isinstance(lm_head, Int8Linear)
    calls: list[int] = []
    original = Int8Linear.argmax
    monkeypatch.setattr(Int8Linear, "argmax", lambda self, x: calls.append(x.shape[0]) or original(self, x))
    prompts = [[5, 6, 7], list(range(10, 40)), [3] * 9]
    fused = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert calls and all(n <= len(prompts) for n in calls)  # the argmax ran, on the sampling rows only
    calls.clear()  # logprobs need the logits: the sampler's argmax over the same kernel's outputs
    logits = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True, logprobs=0),
                          use_tqdm=False)
    assert not calls
    assert [o.outputs[0].token_ids for o in fused] == [o.outputs[0].token_ids for o in logits]
