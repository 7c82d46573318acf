"""Where the shared services are, read once from the environment at the edge."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/ipsx"


@dataclass(frozen=True, slots=True)
class Environment:
    """``IPSX_REDIS_URL`` and ``IPSX_DATABASE_URL``; ``None`` where unset."""

    redis_url: str | None
    database_url: str | None = field(repr=False)

    @classmethod
    def from_env(cls) -> Environment:
        return cls(
            redis_url=os.environ.get("IPSX_REDIS_URL") or None,
            database_url=os.environ.get("IPSX_DATABASE_URL") or None,
        )

    @property
    def redis(self) -> str:
        return self.redis_url or DEFAULT_REDIS_URL

    @property
    def database(self) -> str:
        return self.database_url or DEFAULT_DATABASE_URL
