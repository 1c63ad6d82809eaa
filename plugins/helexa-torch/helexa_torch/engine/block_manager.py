"""The paged KV cache's bookkeeping: fixed-size blocks, reference counts, and prefix reuse.

Every full block is identified by a chain hash of its tokens and all tokens before
it, so one lookup proves a whole prefix. A block whose last user finished keeps its
hash on the free list and is revived if a later prompt starts the same way (a
repeated system prompt is not recomputed); it is forgotten only when reused.
"""

from __future__ import annotations

from collections import OrderedDict

from helexa_torch.engine.sequence import Sequence


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.ref = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.tokens_of: list[tuple[int, ...] | None] = [None] * num_blocks
        self.by_hash: dict[int, int] = {}
        # Free blocks, least recently freed first; a dict so a revived block leaves in O(1).
        self.free: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))

    @property
    def free_blocks(self) -> int:
        return len(self.free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    @staticmethod
    def chain(previous: int, tokens: tuple[int, ...]) -> int:
        return hash((previous, tokens))

    def _lookup(self, seq: Sequence) -> list[int]:
        """Blocks of cached prefix for a sequence's tokens (never all of them: the last token is computed)."""
        size = self.block_size
        usable = (len(seq.token_ids) - 1) // size
        hits, previous = [], 0
        for i in range(usable):
            tokens = seq.block_tokens(i * size, (i + 1) * size)
            key = self.chain(previous, tokens)
            block = self.by_hash.get(key)
            if block is None or self.tokens_of[block] != tokens:
                break
            hits.append(block)
            previous = key
        return hits

    def can_allocate(self, seq: Sequence, reserve: int = 0) -> bool:
        hits = self._lookup(seq)
        revived = sum(1 for b in hits if self.ref[b] == 0)
        needed = self.blocks_for(len(seq.token_ids)) - len(hits) + revived
        return needed + reserve <= len(self.free)

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its tokens, reusing cached prefix blocks."""
        hits = self._lookup(seq)
        previous = 0
        for block in hits:
            if self.ref[block] == 0:
                del self.free[block]
            self.ref[block] += 1
            previous = self.chain(previous, self.tokens_of[block])  # type: ignore[arg-type]
            seq.block_hashes.append(previous)
        seq.block_table = list(hits)
        for _ in range(self.blocks_for(len(seq.token_ids)) - len(hits)):
            seq.block_table.append(self._take())
        seq.num_computed = len(hits) * self.block_size
        seq.cached_prompt = min(seq.num_computed, seq.prompt_len)

    def _take(self) -> int:
        block, _ = self.free.popitem(last=False)
        old = self.hash_of[block]
        if old is not None and self.by_hash.get(old) == block:
            del self.by_hash[old]
        self.hash_of[block] = self.tokens_of[block] = None
        self.ref[block] = 1
        return block

    def can_append(self, seq: Sequence) -> bool:
        """Whether the sequence's next token has a slot (a new block is needed only at a boundary)."""
        return len(seq.token_ids) <= len(seq.block_table) * self.block_size or bool(self.free)

    def append(self, seq: Sequence) -> None:
        if len(seq.token_ids) > len(seq.block_table) * self.block_size:
            seq.block_table.append(self._take())

    def register(self, seq: Sequence) -> None:
        """Hash the sequence's blocks that are now full and computed, so later prompts can reuse them."""
        size = self.block_size
        full = min(seq.num_computed, len(seq.token_ids)) // size
        previous = seq.block_hashes[-1] if seq.block_hashes else 0
        for i in range(len(seq.block_hashes), full):
            tokens = seq.block_tokens(i * size, (i + 1) * size)
            previous = self.chain(previous, tokens)
            seq.block_hashes.append(previous)
            block = seq.block_table[i]
            if self.hash_of[block] is None:
                self.hash_of[block], self.tokens_of[block] = previous, tokens
                self.by_hash.setdefault(previous, block)

    def release(self, seq: Sequence) -> None:
        """Return a sequence's blocks; cached ones stay findable until reused."""
        for block in reversed(seq.block_table):
            self.ref[block] -= 1
            if self.ref[block] == 0:
                self.free[block] = None
        seq.block_table, seq.block_hashes = [], []
        seq.num_computed = 0
