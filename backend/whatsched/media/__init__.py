"""Attachments: what a file really is (inspect), where its bytes live (storage), and its SQL
(queries), for supabase/migrations/20261206000300_media.sql."""
