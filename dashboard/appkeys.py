"""Typed keys of the resources the API application holds."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from dashboard.settings import ApiSettings
from matching.market import Market

SETTINGS = web.AppKey("settings", ApiSettings)
PG = web.AppKey("pg", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
MARKET = web.AppKey("market", Market)
