"""whatsched: a Supabase-native backend for scheduling WhatsApp messages."""

__version__ = "0.1.0"
