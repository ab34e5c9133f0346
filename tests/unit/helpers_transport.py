"""`ScriptedTransport`: stands in for the transport through the `PostJson` protocol the backends
are written against. It records each call and answers from a script: `reply(route, body)`
returns the response JSON, or an exception to raise."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from asynctts.ledger import Charge

Reply = Callable[[str, Mapping[str, Any]], dict[str, Any] | BaseException]


@dataclass
class Call:
    route: str
    body: dict[str, Any]
    charges: tuple[Charge, ...]
    tokens_hint: int
    affinity: str | None = None


@dataclass
class ScriptedTransport:
    reply: Reply
    calls: list[Call] = field(default_factory=list)

    async def post_json(
        self,
        route: str,
        body: Mapping[str, Any],
        *,
        charges: Sequence[Charge] = (),
        tokens_hint: int = 0,
        affinity: str | None = None,
    ) -> dict[str, Any]:
        self.calls.append(Call(route, dict(body), tuple(charges), tokens_hint, affinity))
        await asyncio.sleep(0)
        answer = self.reply(route, body)
        if isinstance(answer, BaseException):
            raise answer
        return answer
