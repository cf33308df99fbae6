"""Plain-PyTorch twins of the Triton kernels.

Each function here has the same name, signature and semantics as its Triton counterpart in
`fastllm.kernels`. They serve twice: as the `backend="torch"` path of the engine (so they are
written to be reasonably fast on a CPU) and, fed float64 tensors, as the reference the kernels
are tested against. Math runs in at least float32 whatever the storage dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastllm.kernels._checks import (
    FLOAT_DTYPES,
    check_cu_seqlens,
    check_paged_decode,
    check_rms_norm,
    check_rotary,
    check_sample,
    check_silu_and_mul,
    check_softmax_scale,
    check_store_kv_cache,
    check_tensor,
    check_varlen_attention,
    check_window,
)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax along `dim`, computed in (at least) float32, returned in x's dtype."""
    check_tensor("x", x, dtypes=FLOAT_DTYPES)
    return torch.softmax(x.to(_compute_dtype(x.dtype)), dim=dim).to(x.dtype)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, in x's dtype. HF's rounding: normalize in float32, then scale in
    the weight's precision: a weight of x's half dtype scales after the cast (Llama), a float32
    weight before it (Gemma's 1 + w)."""
    check_rms_norm(x, weight, eps)
    return _rms_norm(x, weight, eps)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # F.rms_norm computes x * rsqrt(mean(x^2) + eps) (* weight) in one call, measured bit-identical
    # to spelling it out in float32 and float64. Half types are normalized in float32; HF Llama
    # casts before the scale (a half weight), HF Gemma after it (a float32 weight), so there the
    # weight is applied outside.
    compute_dtype = _compute_dtype(x.dtype)
    if x.dtype == compute_dtype and weight.dtype == compute_dtype:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    normed = F.rms_norm(x.to(compute_dtype), (x.shape[-1],), eps=eps)
    if weight.dtype == x.dtype:
        return weight * normed.to(x.dtype)
    return (normed * weight.to(compute_dtype)).to(x.dtype)


def fused_add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (rms_norm(x + residual), x + residual): the residual stream and its normalized copy."""
    check_rms_norm(x, weight, eps, residual)
    summed = x + residual
    return _rms_norm(summed, weight, eps), summed


def rotary_embedding(
    q: torch.Tensor,
    k: torch.Tensor,
    positions: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding, "rotate half" (GPT-NeoX / HF Llama) layout.

    q: [T, Hq, D], k: [T, Hkv, D], positions: int [T], cos_cache/sin_cache: [max_position, D // 2].
    Returns new rotated (q, k).
    """
    check_rotary(q, k, positions, cos_cache, sin_cache)
    cos = cos_cache[positions].unsqueeze(1)
    sin = sin_cache[positions].unsqueeze(1)
    return _rotate_half(q, cos, sin), _rotate_half(k, cos, sin)


def _rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x1 * cos - x2 * sin | x2 * cos + x1 * sin for x = x1 | x2 (halves of the last dim), in x's dtype."""
    xf = x.to(torch.promote_types(_compute_dtype(x.dtype), cos.dtype))
    x1, x2 = xf.chunk(2, dim=-1)
    out = torch.empty_like(xf)
    out1, out2 = out.chunk(2, dim=-1)
    # Written straight into the two halves of the output (no torch.cat pass).
    torch.mul(x1, cos, out=out1).sub_(x2 * sin)
    torch.mul(x2, cos, out=out2).add_(x1 * sin)
    return out.to(x.dtype)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """SwiGLU activation: x is [..., 2 * I] = [gate | up]; returns silu(gate) * up, [..., I]
    (written into `out` when given: see check_silu_and_mul)."""
    check_silu_and_mul(x, out)
    gate, up = x.chunk(2, dim=-1)
    if out is None:
        return F.silu(gate).mul_(up)  # in place on silu's fresh output: one temporary less
    return torch.mul(F.silu(gate), up, out=out)


def gelu_tanh_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """GeGLU activation (Gemma): x is [..., 2 * I] = [gate | up]; returns gelu_tanh(gate) * up,
    [..., I] (written into `out` when given)."""
    check_silu_and_mul(x, out)
    gate, up = x.chunk(2, dim=-1)
    if out is None:
        return F.gelu(gate, approximate="tanh").mul_(up)
    return torch.mul(F.gelu(gate, approximate="tanh"), up, out=out)


def store_kv_cache(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Write new keys/values into the paged caches, in place.

    k, v: [T, Hkv, D]; caches: [num_blocks, block_size, Hkv, D]; slot_mapping: int [T] with
    slot = block * block_size + offset. Slots < 0 are padding and skipped.
    """
    check_store_kv_cache(k, v, k_cache, v_cache, slot_mapping)
    flat_k = k_cache.view(-1, *k_cache.shape[2:])
    flat_v = v_cache.view(-1, *v_cache.shape[2:])
    slots = slot_mapping.long()
    if bool((slots >= 0).all()):
        # The engine never pads: a plain row copy, without a boolean mask and its nonzero().
        flat_k.index_copy_(0, slots, k)
        flat_v.index_copy_(0, slots, v)
        return
    keep = slots >= 0
    flat_k[slots[keep]] = k[keep]
    flat_v[slots[keep]] = v[keep]


def _gather_blocks(cache: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """Whole blocks of a paged cache [num_blocks, block_size, Hkv, D]: block ids [..., n] ->
    [..., n * block_size, Hkv, D]. index_select copies each block in one piece, far faster on a
    CPU than advanced indexing."""
    rows = cache.index_select(0, blocks.flatten().long())
    return rows.view(*blocks.shape[:-1], blocks.shape[-1] * cache.shape[1], *cache.shape[2:])


def _gather_paged(cache: torch.Tensor, blocks: torch.Tensor, length: int) -> torch.Tensor:
    """The first `length` tokens of one sequence from a paged cache: [length, Hkv, D]."""
    num_blocks = -(-length // cache.shape[1])
    return _gather_blocks(cache, blocks[:num_blocks])[:length]


def _attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float, window: int | None = None
) -> torch.Tensor:
    """Attention for one sequence: q [lq, Hq, D], k/v [lk, Hkv, D] -> [lq, Hq, D].

    The causal mask is aligned bottom-right: query i sees keys j <= i + lk - lq, and with a
    `window` only the last `window` of them (j > i + lk - lq - window). Queries that see no key
    at all (possible only when lq > lk) produce zeros, as flash-attention does.
    """
    lq, lk = q.shape[0], k.shape[0]
    dtype = _compute_dtype(q.dtype)
    # [1, H, L, D]: SDPA on CPU picks a different (not bit-identical) kernel for 3-D inputs, and
    # HF transformers calls it with 4-D ones; matching it keeps greedy parity exact.
    qh, kh, vh = (t.transpose(0, 1).unsqueeze(0).to(dtype) for t in (q, k, v))
    if window is not None and window >= lk:
        window = None  # every key is inside the window: no mask (HF then runs SDPA unmasked too)
    if causal and lq == lk and window is None:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=True)
    elif causal:
        rows = torch.arange(lq, device=q.device).unsqueeze(1)
        cols = torch.arange(lk, device=q.device).unsqueeze(0)
        visible = cols <= rows + (lk - lq)
        if window is not None:
            visible &= cols > rows + (lk - lq - window)
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=visible, scale=scale, enable_gqa=True)
        out = out.masked_fill(~visible.any(dim=1).view(1, 1, lq, 1), 0.0)
    else:
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1).to(q.dtype)


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    *,
    causal: bool = True,
    softmax_scale: float | None = None,
    block_table: torch.Tensor | None = None,
    max_seqlen_q: int | None = None,
    max_seqlen_k: int | None = None,
    window: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention over packed variable-length sequences (flash-attention's varlen conventions).

    q: [Tq, Hq, D]; k, v: [Tk, Hkv, D], or with `block_table` the paged caches
    [num_blocks, block_size, Hkv, D]; cu_seqlens_q/k: int32 [B + 1] cumulative lengths (with a
    block table, cu_seqlens_k holds each sequence's cached length, new tokens included).
    `window` (causal only): each query sees at most the last `window` keys up to itself
    (flash-attention's window_size=(window - 1, 0)); None = all of them.
    `max_seqlen_q`/`max_seqlen_k` are ignored here: the Triton kernel sizes its grid with
    `max_seqlen_q` without a sync (and only type-checks `max_seqlen_k`). `out`: where to write
    the result (q's shape, dtype and device); None = a new tensor.
    """
    check_varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, block_table)
    scale = check_softmax_scale(softmax_scale, q.shape[-1])
    window = check_window(window, causal)
    paged = block_table is not None
    starts_q, starts_k = check_cu_seqlens(
        cu_seqlens_q, cu_seqlens_k, q.shape[0],
        num_k_tokens=None if paged else k.shape[0],
        kv_capacity=block_table.shape[1] * k.shape[1] if paged else None,
    )
    if out is None:
        out = torch.empty_like(q)
    elif not isinstance(out, torch.Tensor) or (out.shape, out.dtype, out.device) != (q.shape, q.dtype, q.device):
        raise ValueError(f"out must be a tensor of q's shape {tuple(q.shape)}, dtype {q.dtype} and device {q.device}")
    for b in range(len(starts_q) - 1):
        q0, q1, k0, k1 = starts_q[b], starts_q[b + 1], starts_k[b], starts_k[b + 1]
        if q1 == q0:
            continue
        if block_table is None:
            keys, values = k[k0:k1], v[k0:k1]
        else:
            keys = _gather_paged(k, block_table[b], k1 - k0)
            values = _gather_paged(v, block_table[b], k1 - k0)
        out[q0:q1] = _attend(q[q0:q1], keys, values, causal, scale, window)
    return out


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    block_table: torch.Tensor,
    *,
    softmax_scale: float | None = None,
    window: int | None = None,
) -> torch.Tensor:
    """Attention of one new query token per sequence over its paged KV cache.

    q: [B, Hq, D]; caches: [num_blocks, block_size, Hkv, D]; cache_seqlens: int32 [B] (>= 1,
    the new token included); block_table: int32 [B, max_blocks]. `window`: each query sees only
    its sequence's last `window` tokens (None = all). Returns [B, Hq, D].
    """
    check_paged_decode(q, k_cache, v_cache, cache_seqlens, block_table)
    scale = check_softmax_scale(softmax_scale, q.shape[-1])
    window = check_window(window)
    batch, block_size = q.shape[0], k_cache.shape[1]
    lengths = cache_seqlens.tolist()
    if min(lengths) < 1:
        raise ValueError(f"cache_seqlens must all be >= 1, got {min(lengths)}")
    max_len = max(lengths)
    num_blocks = -(-max_len // block_size)
    if num_blocks > block_table.shape[1]:
        raise ValueError(
            f"cache_seqlens up to {max_len} need {num_blocks} blocks per row, block_table has {block_table.shape[1]}"
        )
    dtype = _compute_dtype(q.dtype)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    # With a window, the blocks before every sequence's window are not gathered.
    first_block = 0 if window is None else max(0, min(lengths) - window) // block_size
    blocks = block_table[:, first_block:num_blocks]
    first, span = first_block * block_size, max_len - first_block * block_size
    # [B, span, Hkv, D] gathered -> [B, Hkv, span, D] views (SDPA takes the strides as they are).
    keys, values = (
        _gather_blocks(cache, blocks)[:, :span].transpose(1, 2).to(dtype) for cache in (k_cache, v_cache)
    )
    # The query heads sharing a KV head become SDPA's query rows ([B, Hkv, group, D]): grouped-query
    # attention without repeating keys and values, and one kernel call for the whole batch.
    grouped_q = q.reshape(batch, num_kv_heads, q.shape[1] // num_kv_heads, head_dim).to(dtype)
    mask = None
    windowed = window is not None and max_len > window
    if min(lengths) < max_len or windowed:
        columns = torch.arange(first, max_len, device=q.device).unsqueeze(0)
        visible = columns < cache_seqlens.unsqueeze(1)
        if windowed:
            visible &= columns >= cache_seqlens.unsqueeze(1) - window
        mask = visible.view(batch, 1, 1, span)
    out = F.scaled_dot_product_attention(grouped_q, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(q.shape).to(q.dtype)


def filtered_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
) -> torch.Tensor:
    """The distribution `sample` draws from, [B, V]: temperature, then top-k, then top-p, then min-p.

    Each filter acts on the renormalized result of the one before. Rows with temperature 0 get
    a one-hot distribution on the (first) argmax. top_k 0 = off; top_p 1 = off; min_p 0 = off.
    """
    check_sample(logits, temperature, top_k, top_p, min_p, seeds=None)
    return _filtered_probs(logits, temperature, top_k, top_p, min_p)


def _filtered_probs(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    dtype = _compute_dtype(logits.dtype)
    batch, vocab = logits.shape
    greedy = temperature <= 0
    safe_t = torch.where(greedy, torch.ones_like(temperature), temperature).to(dtype)
    probs = torch.softmax(logits.to(dtype) / safe_t.unsqueeze(1), dim=-1)

    sorted_probs, order = probs.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), vocab).unsqueeze(1)
    keep = rank < k
    kept = sorted_probs * keep
    kept = kept / kept.sum(-1, keepdim=True)
    # top-p: keep the smallest prefix whose mass reaches top_p (a token is kept when the mass
    # strictly before it is below top_p, so the first token is always kept).
    mass_before = kept.cumsum(-1) - kept
    keep &= mass_before < top_p.to(dtype).unsqueeze(1)
    kept = sorted_probs * keep
    kept = kept / kept.sum(-1, keepdim=True)
    # min-p: relative to the most likely token of the renormalized distribution.
    keep &= kept >= min_p.to(dtype).unsqueeze(1) * kept[:, :1]
    kept = sorted_probs * keep
    kept = kept / kept.sum(-1, keepdim=True)

    out = torch.zeros_like(probs).scatter_(1, order, kept)
    if bool(greedy.any()):
        one_hot = F.one_hot(logits.argmax(dim=-1), vocab).to(dtype)
        out = torch.where(greedy.unsqueeze(1), one_hot, out)
    return out


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
) -> torch.Tensor:
    """Draw one token id per row from `filtered_probs(...)`; int64 [B].

    A row's draw depends only on its logits, its parameters and its seed: one uniform number from
    a generator seeded with `seeds[row]`, mapped through the inverse CDF of the filtered
    distribution. Temperature-0 rows take the argmax.
    """
    check_sample(logits, temperature, top_k, top_p, min_p, seeds)
    greedy = temperature <= 0
    if bool(greedy.all()):
        return logits.argmax(dim=-1)
    probs = _filtered_probs(logits, temperature, top_k, top_p, min_p)
    uniforms = torch.empty(logits.shape[0], dtype=probs.dtype)
    for row, seed in enumerate(seeds.tolist()):
        generator = torch.Generator().manual_seed(seed & 0xFFFF_FFFF_FFFF_FFFF)
        uniforms[row] = torch.rand((), generator=generator, dtype=torch.float64).item()
    cdf = probs.cumsum(-1)
    targets = uniforms.to(probs.device).unsqueeze(1) * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, targets, right=True).squeeze(1)
    # Never land on a zero-probability token through rounding at the top of the CDF.
    last_kept = (probs > 0).cumsum(-1).argmax(-1)
    tokens = torch.minimum(tokens, last_kept)
    return torch.where(greedy, logits.argmax(dim=-1), tokens)
