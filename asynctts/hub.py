"""Whether the Hugging Face hub can be asked at all, decided in one short look.

Rules:
- The hub client retries for half a minute or more before it gives up on an unreachable hub
  (49 s measured for a tokenizer, 24 s for a data file). Anything here that would ask the hub
  asks `hub_unavailable()` first and fails at once with its reason.
- `HF_HUB_OFFLINE` set to a true value means offline: no probe at all.
- Otherwise one TCP connect to the hub's host with a short timeout; the answer is kept for
  `_REMEMBER_S`, so a program that loads several tokenizers probes once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Final

__all__ = ["HUB_HOST", "hub_unavailable"]

HUB_HOST: Final = "huggingface.co"
_REMEMBER_S: Final = 60.0
_TRUE = {"1", "true", "yes", "on"}

_lock = threading.Lock()
_last: tuple[float, str | None] | None = None  # (when probed, reason or None)


def hub_unavailable(timeout_s: float = 3.0) -> str | None:
    """Why the hub cannot be asked now, or None when it answers.

    Args:
        timeout_s: the connect timeout of the probe.
    """
    global _last
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "HF_HUB_OFFLINE is set"
    with _lock:
        now = time.monotonic()
        if _last is not None and now - _last[0] < _REMEMBER_S:
            return _last[1]
        try:
            with socket.create_connection((HUB_HOST, 443), timeout=timeout_s):
                reason = None
        except OSError as err:
            reason = f"{HUB_HOST}:443 is unreachable ({type(err).__name__}: {err})"
        _last = (time.monotonic(), reason)
        return reason
