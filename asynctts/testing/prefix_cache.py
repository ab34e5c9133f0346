"""A model of vLLM's automatic prefix caching, for the simulated server's usage counts.

Rules:
- Prefixes end at each "\\n\\n" (step boundaries) and at the prompt's end, hash-chained like
  vLLM's block hashes: a prefix is known only if every prefix before it is.
- The cache remembers the last `capacity` prefixes (LRU); vLLM always computes a prompt's last
  token, so at most all tokens but one are cached.
"""

from __future__ import annotations

from collections import OrderedDict

from asynctts.testing.sim_model import count_tokens


class PrefixCache:
    """A simple model of vLLM's automatic prefix caching.

    A prompt's cacheable prefixes end at each "\\n\\n" (step boundaries) and at its end; the
    cache remembers the last `capacity` prefixes seen (LRU). A prompt's cached tokens are those
    of its longest remembered prefix, at most all but its last token (vLLM always computes the
    last prompt token).
    """

    def __init__(self, capacity: int = 200_000) -> None:
        if capacity < 1:
            raise ValueError(f"PrefixCache capacity={capacity}: need >= 1")
        self.capacity = capacity
        self._seen: OrderedDict[int, None] = OrderedDict()

    def clear(self) -> None:
        self._seen.clear()

    def lookup(self, prompt: str) -> tuple[int, int]:
        """Remember `prompt`'s prefixes; return (prompt tokens, cached tokens)."""
        chain = 0
        tokens = 0
        cached = 0
        hitting = True
        for part in prompt.split("\n\n"):
            # Hash-chained like vLLM's block hashes: a prefix is known only if all before it are.
            chain = hash((chain, part))
            tokens += count_tokens(part)
            if hitting and chain in self._seen:
                cached = tokens
                self._seen.move_to_end(chain)
            else:
                hitting = False
                self._seen[chain] = None
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return tokens, min(cached, max(tokens - 1, 0))


__all__ = ["PrefixCache"]
