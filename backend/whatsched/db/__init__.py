"""The database: the embedded server, the Supabase bootstrap, migrations and connection pools."""
