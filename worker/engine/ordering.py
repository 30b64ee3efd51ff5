"""Pixel ordering for the rank-based drift metrics (Spearman, Gini, top-Q sets).

One stable ascending order per map serves all of them; equal values keep row-major order
(lowest index first), the same on every device. On the CPU each map is ordered by a two-pass
LSD radix sort of its float32 bit patterns (numpy's stable argsort of 16-bit integers is a
radix sort) and its average ranks in a second row pass, rows spread over a pool of torch's
thread count (numpy releases the GIL). On 2 cores the order costs about what ``torch.sort``
of the keys does (9-10 ms for 16 maps of 224 x 224), but it leaves the ranks a cheap
run-length pass; the pool pays only where torch's OpenMP threads do not spin between ops
(``OMP_WAIT_POLICY=PASSIVE``: 5 ms), which camdrift does not set because it slows the
forward. Elsewhere ``torch.sort`` of the same integer keys (a radix sort on CUDA). Maps
outside the keys' domain (negative, -0.0, NaN, inf) take ``torch.sort`` of the values.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor

_FINITE_LIMIT = 0x7F800000  # float32 bit pattern of +inf


def order_keys(maps: Tensor) -> Tensor | None:
    """int32 keys that order like the values, or None outside their domain.

    For finite float32 >= +0.0 the bit pattern read as an integer orders like the value;
    -0.0, negatives and negative NaN have the sign bit (negative keys); +inf and NaN have
    keys >= 0x7F800000.
    """
    keys = maps.contiguous().view(torch.int32)
    if keys.numel() == 0 or int(keys.amin()) < 0 or int(keys.amax()) >= _FINITE_LIMIT:
        return None
    return keys


def ascending_order(maps: Tensor) -> tuple[Tensor, Tensor]:
    """(permutation int64, sorted values float32) of each row of float32 [R, P], ascending,
    stable."""
    if maps.device.type == "cpu":
        perm = radix_order_cpu(maps)
        if perm is not None:
            return perm, maps.gather(1, perm)
    else:
        keys = order_keys(maps)
        if keys is not None:
            res = torch.sort(keys, dim=1, stable=True)
            return res.indices, res.values.view(torch.float32)
    res = torch.sort(maps, dim=1, stable=True)
    return res.indices, res.values


def average_ranks(perm: Tensor, values: Tensor) -> Tensor:
    """Each pixel's average rank (1-based, ascending; ties share the mean of their
    positions), in pixel order, from :func:`ascending_order`'s output. float32 (exact:
    halves of integers) while a row has fewer than 2^23 pixels, else float64."""
    rows, p = values.shape
    dtype = torch.float32 if p < 2**23 else torch.float64
    if values.device.type != "cpu":
        ranked = _average_ranks_sorted(values).to(dtype)
        return torch.empty_like(ranked).scatter_(1, perm, ranked)
    out = np.empty((rows, p), dtype=np.float32 if dtype == torch.float32 else np.float64)
    order, sorted_values = perm.numpy(), values.numpy()

    def rank_row(i: int) -> None:
        v = sorted_values[i]
        first = np.empty(p, dtype=bool)
        first[0] = True
        np.not_equal(v[1:], v[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        lengths = np.diff(starts, append=p)
        # a run over positions [s, s + n) has mean 1-based rank s + (n + 1) / 2
        out[i, order[i]] = np.repeat((2 * starts + lengths + 1) * 0.5, lengths)

    _run_rows(rank_row, rows)
    return torch.from_numpy(out)


def radix_order_cpu(maps: Tensor) -> Tensor | None:
    """The stable ascending order of each row of a CPU float32 [R, P] (None outside the keys'
    domain): stable-sorting by the key's low 16 bits, then stably by its high 16 bits, orders
    by the whole key and keeps equal keys in row-major order."""
    keys = order_keys(maps)
    if keys is None:
        return None
    bits = keys.numpy().view(np.uint32)
    out = np.empty(bits.shape, dtype=np.int64)

    def order_row(i: int) -> None:
        row = bits[i]
        by_low = np.argsort(row.astype(np.uint16), kind="stable")  # astype keeps the low half
        by_high = np.argsort((row >> 16).astype(np.uint16)[by_low], kind="stable")
        out[i] = by_low[by_high]

    _run_rows(order_row, bits.shape[0])
    return torch.from_numpy(out)


def _average_ranks_sorted(values: Tensor) -> Tensor:
    """Average ranks (1-based) at each position of rows sorted ascending, in torch (any
    device). All rows are walked as one flat sequence whose runs never cross a row boundary
    (each row starts a run); twice the mean rank stays an integer until the final halving."""
    rows, p = values.shape
    first = torch.ones(rows, p, dtype=torch.bool, device=values.device)
    torch.ne(values[:, 1:], values[:, :-1], out=first[:, 1:])
    flat = first.reshape(-1)
    dtype = torch.int64 if rows * p >= 2**30 else torch.int32
    run = torch.cumsum(flat, dim=0, dtype=dtype) - 1
    starts = torch.nonzero(flat).squeeze(1).to(dtype)
    ends = torch.cat([starts[1:], starts.new_tensor([rows * p])])
    twice = (starts + ends + 1).index_select(0, run).reshape(rows, p)
    twice -= (2 * p) * torch.arange(rows, dtype=dtype, device=values.device).unsqueeze(1)
    return twice.to(torch.float64) * 0.5


_POOLS: dict[int, ThreadPoolExecutor] = {}  # worker count -> pool; emptied in a forked child
os.register_at_fork(after_in_child=_POOLS.clear)


def _run_rows(fn, rows: int) -> None:
    """``fn(i)`` for every row, on a pool of torch's thread count."""
    workers = min(torch.get_num_threads(), rows)
    if workers < 2:
        for i in range(rows):
            fn(i)
        return
    pool = _POOLS.get(workers)
    if pool is None:
        pool = _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="camdrift-rank")
    list(pool.map(fn, range(rows)))
