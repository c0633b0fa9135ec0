"""Offline sync: the answers of synced operations, stored per (user, client_op_id)."""
