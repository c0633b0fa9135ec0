"""Notifications: the caller's inbox (queries) and the text of the notifications Python creates (texts)."""
