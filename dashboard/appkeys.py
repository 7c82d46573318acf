"""Typed keys of the resources the API application holds."""

from __future__ import annotations

import aiohttp
import asyncpg
from aiohttp import web
from redis.asyncio import Redis

from dashboard.leader import MarketSeat
from dashboard.settings import ApiSettings

SETTINGS = web.AppKey("settings", ApiSettings)
PG = web.AppKey("pg", asyncpg.Pool)
REDIS = web.AppKey("redis", Redis)
SEAT = web.AppKey("seat", MarketSeat)  # whether this node runs the market, and who does
HTTP = web.AppKey("http", aiohttp.ClientSession)  # to forward market calls to the market's node
