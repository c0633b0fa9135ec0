"""Webhooks: endpoints, the outbox and its sender (supabase/migrations/20261206000200_webhooks)."""
