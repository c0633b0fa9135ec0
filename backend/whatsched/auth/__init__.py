"""Authentication: token verification (one path for every provider), the local GoTrue-compatible
provider, the Supabase Auth provider, rate limits and the client IP."""
