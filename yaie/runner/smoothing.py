"""Activation smoothing before int8 (W8A8) quantization, after SmoothQuant (Xiao et al., 2022).

Per-token int8 activations lose most of their precision when a few input channels are far larger than the rest:
SmolLM2's QKV inputs carry one channel ~25x the typical channel maximum, its last down_proj input ~100x, so one
token's scale (its largest value / 127) leaves ordinary channels one or two levels. Smoothing divides input
channel j by s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha) and multiplies the weight's column j by s_j: the
product is unchanged in exact arithmetic, and the difficulty moves from activations to weights, which are
quantized per output channel and have headroom.

The division is folded into the operation that produces the input, so it costs nothing at run time:
- QKV and gate/up inputs come from an RMSNorm: its weight is divided by s;
- down_proj's input is silu(gate) * up: the up rows of gate_up_proj are divided by s;
- o_proj's input is the attention output, a convex mix of V: the V rows of qkv_proj (and bias) are divided by s;
  with grouped-query attention the query heads of a group share one V head, so they share one s;
- the lm_head's input comes from the final RMSNorm: its weight is divided by s (the tied embedding is untouched:
  the quantized lm_head has its own copy).

max|X_j| comes from a calibration pass: the float model run over a few built-in texts (`CALIBRATION_TEXTS`).
"""

from __future__ import annotations

import logging
import time

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from yaie.models.llama import LlamaForCausalLM
from yaie.runner.standalone import run_prompt

logger = logging.getLogger(__name__)

ALPHA = 0.65  # bench/quality.py, int8 perplexity: 25.55 at 0.5, 25.34 at 0.65 (float32 24.92)
MIN_SCALE = 1e-5

# Original texts of the kinds a chat model serves: conversation, explanation, lists, numbers and code.
CALIBRATION_TEXTS = (
    "The river rose during the night, and by morning the lower fields were under water. Farmers moved their "
    "animals to the ridge, where the old stone barn still stood. Nobody could remember a flood like it since "
    "the winter the bridge washed away, and the older people in the village spent the day comparing stories.",
    "To make a simple loaf of bread, mix 500 g of flour, 10 g of salt, 7 g of dried yeast and 350 ml of warm "
    "water. Knead the dough for ten minutes, let it rise for an hour, shape it, let it rise again for 45 "
    "minutes, then bake it at 230 degrees Celsius for about 30 minutes until the crust is deep brown.",
    "def merge_sorted(left: list[int], right: list[int]) -> list[int]:\n    result = []\n    i = j = 0\n"
    "    while i < len(left) and j < len(right):\n        if left[i] <= right[j]:\n            result.append(left[i])"
    "\n            i += 1\n        else:\n            result.append(right[j])\n            j += 1\n"
    "    return result + left[i:] + right[j:]\n",
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. It happens in the chloroplasts "
    "of plant cells, where chlorophyll absorbs mostly red and blue light. The sugar feeds the plant; the "
    "oxygen is released into the air, which is why forests and oceans matter so much for the atmosphere.",
)
CALIBRATION_CHATS = (
    ("What is the tallest mountain in Africa?",
     "The tallest mountain in Africa is Mount Kilimanjaro in Tanzania, at about 5,895 metres."),
    ("Give me three ideas for a rainy afternoon.",
     "1. Bake cookies with a new recipe.\n2. Start a jigsaw puzzle.\n3. Watch a classic film you have never seen."),
    ("How many minutes are there in a week?",
     "A week has 7 days x 24 hours x 60 minutes = 10,080 minutes."),
)


def calibration_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """The calibration sequences: each text on its own, and each chat through the model's chat template."""
    sequences = [tokenizer(text)["input_ids"] for text in CALIBRATION_TEXTS]
    if tokenizer.chat_template:
        for question, answer in CALIBRATION_CHATS:
            messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
            sequences.append(list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)))
    return sequences


@torch.inference_mode()
def input_absmax(model: LlamaForCausalLM, sequences: list[list[int]]) -> dict[nn.Module, torch.Tensor]:
    """max |x_j| over every calibration token, per input channel j of every decoder nn.Linear, and of the final
    norm's output (the lm_head's input), keyed by model.norm."""
    absmax: dict[nn.Module, torch.Tensor] = {}

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = (inputs[0] if isinstance(module, nn.Linear) else output).detach().float()
        seen = x.abs().reshape(-1, x.shape[-1]).amax(dim=0)  # [in]
        absmax[module] = seen if module not in absmax else torch.maximum(absmax[module], seen)

    modules = [m for m in model.modules() if isinstance(m, nn.Linear)] + [model.norm]
    handles = [m.register_forward_hook(record) for m in modules]
    try:
        for token_ids in sequences:
            run_prompt(model, token_ids)
    finally:
        for handle in handles:
            handle.remove()
    return absmax


def smoothing_scales(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float = ALPHA) -> torch.Tensor:
    """s [in] for a weight [out, in] whose input channels reach act_absmax [in]."""
    weight_absmax = weight.detach().float().abs().amax(dim=0).clamp(min=MIN_SCALE)  # [in]
    return (act_absmax.clamp(min=MIN_SCALE).pow(alpha) / weight_absmax.pow(1 - alpha)).clamp(min=MIN_SCALE)


@torch.no_grad()
def smooth_model(model: LlamaForCausalLM, absmax: dict[nn.Module, torch.Tensor], alpha: float = ALPHA) -> None:
    """Fold smoothing scales into the weights (see the module docstring), in place; the float model's outputs
    are unchanged up to float rounding."""
    arch = model.arch
    q_size, kv_size = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    group = arch.num_attention_heads // arch.num_key_value_heads
    for layer in model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        _smooth_after_norm(layer.input_layernorm, attn.qkv_proj, absmax[attn.qkv_proj], alpha)
        _smooth_after_norm(layer.post_attention_layernorm, mlp.gate_up_proj, absmax[mlp.gate_up_proj], alpha)
        # o_proj: one scale per V channel, shared by the group's query heads. [Hkv, group, D] views of [Hq * D].
        o_weight = attn.o_proj.weight.view(-1, arch.num_key_value_heads, group, arch.head_dim)
        act = absmax[attn.o_proj].view(arch.num_key_value_heads, group, arch.head_dim).amax(dim=1)
        s = smoothing_scales(act.reshape(-1), o_weight.abs().amax(dim=2).flatten(1), alpha)  # [Hkv * D]
        o_weight.mul_(s.view(1, arch.num_key_value_heads, 1, arch.head_dim))
        _divide_rows(attn.qkv_proj, q_size + kv_size, s)
        # down_proj: its input is silu(gate) * up, linear in up.
        s = smoothing_scales(absmax[mlp.down_proj], mlp.down_proj.weight, alpha)
        mlp.down_proj.weight.mul_(s)
        _divide_rows(mlp.gate_up_proj, arch.intermediate_size, s)


@torch.no_grad()
def smooth_for_int8(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, alpha: float = ALPHA) -> None:
    """Calibrate on the built-in texts and fold the smoothing scales into the model, in place. The lm_head
    becomes a smoothed float copy (a tied embedding stays as it is), for the int8 quantizer to take."""
    started = time.monotonic()
    sequences = calibration_token_ids(tokenizer)
    absmax = input_absmax(model, sequences)
    smooth_model(model, absmax, alpha)
    model.lm_head = _smoothed_lm_head(model, absmax[model.norm], alpha)
    logger.info("int8: activations smoothed (alpha %.2f), calibrated on %d tokens in %.1fs", alpha,
                sum(map(len, sequences)), time.monotonic() - started)


def _smoothed_lm_head(model: LlamaForCausalLM, act_absmax: torch.Tensor, alpha: float) -> nn.Linear:
    """A copy of the lm_head (or of the tied embedding) with smoothed columns; the final norm divided to match."""
    weight = model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight  # [V, H]
    s = smoothing_scales(act_absmax, weight, alpha)
    bias = None if model.lm_head is None else model.lm_head.bias
    smoothed = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    smoothed.weight = nn.Parameter(weight.detach().float() * s, requires_grad=False)
    if bias is not None:
        smoothed.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    model.norm.weight.div_(s)
    return smoothed


def _smooth_after_norm(norm: nn.Module, linear: nn.Linear, act_absmax: torch.Tensor, alpha: float) -> None:
    s = smoothing_scales(act_absmax, linear.weight, alpha)
    linear.weight.mul_(s)
    norm.weight.div_(s)


def _divide_rows(linear: nn.Linear, start: int, s: torch.Tensor) -> None:
    """Rows [start, start + len(s)) of the linear's output (weight and bias) divided by s."""
    linear.weight[start:start + s.numel()].div_(s[:, None])
    if linear.bias is not None:
        linear.bias[start:start + s.numel()].div_(s)
