"""Turn a SchedulerOutput into the flat tensors one forward pass needs.

Sequences are reordered so decodes (one new token) come first, then prefills; `order` maps the runner's
position back to the scheduler's chunk index. Everything is computed with a handful of vectorised tensor ops
on the host, then moved to the device once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from yaie.attention.cpu_kernel import DecodeKernel
from yaie.attention.metadata import AttentionMetadata, GroupMetadata
from yaie.scheduler.output import ScheduledChunk, SchedulerOutput


@dataclass(frozen=True)
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attn: AttentionMetadata
    logits_indices: torch.Tensor  # [N] rows of the hidden states to turn into logits
    sample_chunk_indices: list[int]  # [N] scheduler chunk index of each logits row
    seq_of_token: torch.Tensor  # [T] runner-order sequence of each token (a row of block_table), host
    block_table: torch.Tensor  # [B, max_blocks] every sequence's blocks in runner order, host

    def token_block_table(self) -> torch.Tensor:
        """[T, max_blocks]: each token's sequence's block-table row (a prompt token then reads like a decode)."""
        if self.attn.prefill is None:
            return self.block_table
        return self.block_table.index_select(0, self.seq_of_token)


def prepare_inputs(
    sched: SchedulerOutput, block_size: int, device: torch.device, decode_kernel: DecodeKernel | None = None
) -> StepInputs:
    order = sorted(range(len(sched.chunks)), key=lambda i: sched.chunks[i].num_tokens > 1)
    chunks = [sched.chunks[i] for i in order]
    num_decode = sum(1 for c in chunks if c.num_tokens == 1)
    input_ids: list[int] = []
    positions: list[int] = []
    seq_of_token: list[int] = []
    logits_rows: list[int] = []
    sample_chunks: list[int] = []
    for seq, (idx, chunk) in enumerate(zip(order, chunks, strict=True)):
        input_ids.extend(chunk.token_ids)
        positions.extend(range(chunk.start_position, chunk.start_position + chunk.num_tokens))
        seq_of_token.extend([seq] * chunk.num_tokens)
        if chunk.needs_sample:
            logits_rows.append(len(input_ids) - 1)
            sample_chunks.append(idx)
    block_table = _block_table(chunks)  # [B, max_blocks]
    positions_t = torch.tensor(positions, dtype=torch.long)
    seq_t = torch.tensor(seq_of_token, dtype=torch.long)
    slot_mapping = block_table[seq_t, positions_t // block_size] * block_size + positions_t % block_size
    gather = decode_kernel is None
    decode = _group(chunks[:num_decode], block_table[:num_decode], block_size, gather) if num_decode else None
    prefill = (
        _group(chunks[num_decode:], block_table[num_decode:], block_size, True)
        if num_decode < len(chunks) else None
    )
    attn = AttentionMetadata(
        slot_mapping=slot_mapping.to(device),
        block_size=block_size,
        num_decode_tokens=num_decode,
        decode=_to(decode, device),
        prefill=_to(prefill, device),
        decode_kernel=decode_kernel,
    )
    return StepInputs(
        input_ids=torch.tensor(input_ids, dtype=torch.long, device=device),
        positions=positions_t.to(device),
        attn=attn,
        logits_indices=torch.tensor(logits_rows, dtype=torch.long, device=device),
        sample_chunk_indices=sample_chunks,
        seq_of_token=seq_t,
        block_table=block_table,
    )


def _block_table(chunks: list[ScheduledChunk]) -> torch.Tensor:
    max_blocks = max(len(c.block_ids) for c in chunks)
    rows = [c.block_ids + [0] * (max_blocks - len(c.block_ids)) for c in chunks]
    return torch.tensor(rows, dtype=torch.long)


def _group(
    chunks: list[ScheduledChunk], block_table: torch.Tensor, block_size: int, gather: bool
) -> GroupMetadata:
    """Block tables, and for the gather path padded gather indices and causal masks (see GroupMetadata)."""
    query_lens = torch.tensor([c.num_tokens for c in chunks], dtype=torch.long)  # [B]
    starts = torch.tensor([c.start_position for c in chunks], dtype=torch.long)  # [B]
    context_lens = starts + query_lens
    max_q, max_ctx = int(query_lens.max()), int(context_lens.max())
    if not gather:
        return GroupMetadata(len(chunks), max_q, max_ctx, block_table, context_lens, None, None, None)
    ctx_pos = torch.arange(max_ctx)  # [L]
    gather_slots = block_table.gather(1, (ctx_pos // block_size).expand(len(chunks), -1).clamp(
        max=block_table.shape[1] - 1)) * block_size + ctx_pos % block_size  # [B, L]
    q_idx = torch.arange(max_q)  # [Q]
    query_pos = starts[:, None] + q_idx[None, :]  # [B, Q] absolute position of each query
    mask = ctx_pos[None, None, :] <= query_pos[:, :, None]  # [B, Q, L] causal over the whole context
    is_pad_query = q_idx[None, :] >= query_lens[:, None]  # [B, Q]
    mask[..., 0] |= is_pad_query  # padded query rows attend slot 0 only (finite softmax; output dropped)
    gather_slots = torch.where(ctx_pos[None, :] < context_lens[:, None], gather_slots, 0)
    query_rows = None
    if max_q > 1:
        query_rows = (torch.arange(len(chunks))[:, None] * max_q + q_idx[None, :])[~is_pad_query]
    return GroupMetadata(
        num_seqs=len(chunks),
        max_query_len=max_q,
        max_context_len=max_ctx,
        block_table=block_table,
        context_lens=context_lens,
        gather_slots=gather_slots,
        attend_mask=mask.unsqueeze(1),
        query_rows=query_rows,
    )


def _to(group: GroupMetadata | None, device: torch.device) -> GroupMetadata | None:
    if group is None or device.type == "cpu":
        return group
    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(device, non_blocking=True)

    return GroupMetadata(
        num_seqs=group.num_seqs,
        max_query_len=group.max_query_len,
        max_context_len=group.max_context_len,
        block_table=group.block_table.to(device, non_blocking=True),
        context_lens=group.context_lens.to(device, non_blocking=True),
        gather_slots=move(group.gather_slots),
        attend_mask=move(group.attend_mask),
        query_rows=move(group.query_rows),
    )
