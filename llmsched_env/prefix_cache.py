"""Automatic prefix caching (vLLM v1's, ``enable_prefix_caching``): freed full KV blocks stay
cached by content, least recently freed first out, and a request that needs the same tokens again
reuses them instead of recomputing them.

Content: this simulator has no token ids, so a block's content is named by who wrote it. Block
``j`` (tokens ``j*bs .. (j+1)*bs - 1``) of a request in a ``prefix_group`` is ``("g", group, j)``:
a group is a conversation, each turn's tokens a prefix of the next turn's prompt, and a request
may reuse group blocks inside its ``prefix_len``; any other request's block is ``("r", rid, j)``,
reusable only by itself (after a recompute preemption). Only full blocks are cached (vLLM hashes
full blocks), and at least one token is always recomputed (vLLM recomputes the last prompt token
of a full hit), so a hit covers at most ``prefill_target - 1`` tokens, in whole blocks.

Capacity: cached blocks are free blocks (``Engine.free_blocks`` counts them); allocating past the
uncached free blocks evicts the least recently freed, a request's tail blocks before its head
(vLLM v1's ``KVCacheManager.free`` frees in reverse order for that reason), so what is left of a
hit is always a prefix. Decisions: resident requests do not share
blocks (a cached block serves one request at a time: the earliest-queued waiting request of a
group holds the group's hit), and swapped-out requests keep their KV on the host, not here.
"""
from __future__ import annotations

from collections import OrderedDict


class PrefixCache:
    """Freed full KV blocks by content, LRU (see the module docstring).

    Args:
        block_size: tokens per KV block.
    """

    def __init__(self, block_size: int):
        self.bs = block_size
        self._lru: OrderedDict = OrderedDict()   # block key -> None, least recently freed first
        self._own: dict[int, int] = {}           # rid -> full blocks it last freed
        self._holders: dict[tuple, set] = {}     # owner -> waiting requests whose hit uses its blocks

    def __len__(self) -> int:
        return len(self._lru)

    @staticmethod
    def _owner(req) -> tuple:
        g = req.spec.prefix_group
        return ("g", g) if g is not None else ("r", req.rid)

    def release(self, req, tokens: int) -> None:
        """``req`` frees its KV of ``tokens`` tokens: its full blocks become cached (most recent)."""
        owner = self._owner(req)
        n = tokens // self.bs
        lru = self._lru
        for j in range(n - 1, -1, -1):  # tail first, so the tail is evicted first (vLLM v1's order)
            key = (*owner, j)
            lru[key] = None
            lru.move_to_end(key)
        if n:
            self._own[req.rid] = n

    def reuse(self, req) -> int:
        """Tokens of ``req`` (waiting, its KV on neither GPU nor host) found cached now; the
        caller starts it from them (``num_computed``), and until it is admitted (``claim``) an
        eviction that cuts them is reported by ``evict``."""
        owner = self._owner(req)
        limit = self._own.get(req.rid, 0)
        if owner[0] == "g":
            if any(r is not req for r in self._holders.get(owner, ())):
                return 0  # another waiting request of the group holds its cached blocks
            limit = max(limit, req.spec.prefix_len // self.bs)
        limit = min(limit, (req.prefill_target - 1) // self.bs)
        j = 0
        lru = self._lru
        while j < limit and (*owner, j) in lru:
            j += 1
        if j:
            self._holders.setdefault(owner, set()).add(req)
        return j * self.bs

    def claim(self, req, tokens: int) -> None:
        """``req`` is admitted with ``tokens`` cached tokens: those blocks leave the cache."""
        owner = self._owner(req)
        holders = self._holders.get(owner)
        if holders is not None:
            holders.discard(req)
            if not holders:
                del self._holders[owner]
        for j in range(tokens // self.bs):
            self._lru.pop((*owner, j), None)

    def forget(self, req) -> None:
        """``req`` finished: nobody reuses its own blocks (a group's stay for the next turn)."""
        self._own.pop(req.rid, None)

    def evict(self, n: int) -> list:
        """Evict the ``n`` least recently freed blocks; returns ``(request, tokens)`` for each
        waiting request whose hit shrank to ``tokens``."""
        lru = self._lru
        shrunk = {}
        for _ in range(min(n, len(lru))):
            key, _ = lru.popitem(last=False)
            owner, j = key[:2], key[2]
            cut = j * self.bs
            for req in self._holders.get(owner, ()):
                prev = shrunk.get(req.rid)
                if req.num_computed > cut and (prev is None or cut < prev[1]):
                    shrunk[req.rid] = (req, cut)
        return list(shrunk.values())
