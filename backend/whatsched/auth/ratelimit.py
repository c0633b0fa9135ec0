"""The login limit from the guide, counted with `limits`: in memory, or in Redis when REDIS_URL is set
so every API process shares one count."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter

LOGIN = parse("5/15 minutes")  # per client IP (the per-user limits are counted in Postgres)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int
    remaining: int
    reset_at: float

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(math.ceil(self.reset_at)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class RateLimits:
    def __init__(self, redis_url: str | None = None) -> None:
        storage: Storage
        if redis_url:
            uri = redis_url if redis_url.startswith("async+") else "async+" + redis_url
            # redis-py (a dependency already), not the coredis client limits defaults to (not installed).
            storage = RedisStorage(uri, implementation="redispy")
        else:
            storage = MemoryStorage()
        self.storage = storage
        self.limiter = MovingWindowRateLimiter(storage)

    async def peek(self, item: RateLimitItem, *keys: str) -> Verdict:
        """The window's state without counting anything: allowed while something remains."""
        stats = await self.limiter.get_window_stats(item, *keys)
        return Verdict(stats.remaining > 0, item.amount, stats.remaining, stats.reset_time)

    async def hit(self, item: RateLimitItem, *keys: str) -> Verdict:
        allowed = await self.limiter.hit(item, *keys)
        stats = await self.limiter.get_window_stats(item, *keys)
        return Verdict(allowed, item.amount, stats.remaining, stats.reset_time)
