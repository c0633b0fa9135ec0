"""The guide's rules live in Postgres (supabase/migrations/20261129000400_content_rules.sql); this
module is Python's side of them: writing the numbers they use, and reading a limit's state.

- `publish_settings`: the environment's values into private.settings, so the API, the worker and
  a supabase-js caller apply the same daily cap, limits, opt-out keywords,
  whether users may add their own WhatsApp numbers, the numbers' health rule and the webhooks'. Run by `whatsched migrate`, `dev`,
  and at the start of every API process (give every process the same environment).
- `rate_limit_status`: what is left of the caller's per-minute limit (the X-RateLimit-* headers).
"""

from __future__ import annotations

import json

import asyncpg

from whatsched.config import Settings


async def publish_settings(conn: asyncpg.Connection, settings: Settings) -> None:
    """Write the rules' numbers; `conn` is an admin connection or one acting as service_role."""
    await conn.execute(
        "update private.settings set send_daily_cap = $1, schedule_per_minute = $2,"
        " group_create_per_minute = $3, opt_out_keywords = $4, opt_in_keywords = $5, spam_max_char_run = $6,"
        " spam_word_limit = $7, reply_window_days = $8, self_service_numbers = $9,"
        " health_half_life_minutes = $10, health_pause_score = $11, health_weight_restricted = $12,"
        " health_weight_failed_ack = $13, health_weight_disconnect = $14, health_weight_opt_out = $15,"
        " health_ramp_hours = $16, health_ramp_share = $17, health_weight_unanswered = $18,"
        " health_unanswered_share = $19, health_unanswered_min = $20, health_unanswered_wait_hours = $21,"
        " webhook_allow_private = $22, webhook_disable_after_days = $23, media_max_image_bytes = $24,"
        " media_max_video_bytes = $25, media_max_audio_bytes = $26, media_max_document_bytes = $27,"
        " updated_at = now() where id",
        settings.send_daily_cap,
        settings.schedule_per_minute,
        settings.group_create_per_minute,
        _words(settings.opt_out_keywords),
        _words(settings.opt_in_keywords),
        settings.spam_max_char_run,
        settings.spam_word_limit,
        settings.reply_window_days,
        settings.self_service_numbers,
        settings.health_half_life_minutes,
        settings.health_pause_score,
        settings.health_weight_restricted,
        settings.health_weight_failed_ack,
        settings.health_weight_disconnect,
        settings.health_weight_opt_out,
        settings.health_ramp_hours,
        settings.health_ramp_share,
        settings.health_weight_unanswered,
        settings.health_unanswered_share,
        settings.health_unanswered_min,
        settings.health_unanswered_wait_hours,
        settings.webhook_allow_private,
        settings.webhook_disable_after_days,
        settings.media_max_image_bytes,
        settings.media_max_video_bytes,
        settings.media_max_audio_bytes,
        settings.media_max_document_bytes,
    )
    # An empty MEDIA_TYPES keeps (or restores) the column's list (Meta's types for WhatsApp).
    types = _words(settings.media_types)
    if types:
        await conn.execute("update private.settings set media_types = $1 where id", types)
    else:
        await conn.execute("update private.settings set media_types = default where id")
    # An empty SPAM_WORDS keeps (or restores) the column's Spanish and English defaults.
    words = _words(settings.spam_words)
    if words:
        await conn.execute("update private.settings set spam_words = $1 where id", words)
    else:
        await conn.execute("update private.settings set spam_words = default where id")


def _words(listed: str) -> list[str]:
    return [w.strip() for w in listed.split(",") if w.strip()]


async def rate_limit_status(conn: asyncpg.Connection, action: str) -> dict[str, int]:
    """{limit, remaining, reset, retry_after} of the caller's limit on `action` ('schedule' or
    'group_create'), as public.rate_limit_status counts it."""
    status: dict[str, int] = json.loads(await conn.fetchval("select public.rate_limit_status($1)::text", action))
    return status
