"""The address book behind the groups and contacts API: request and response models (`models`)
and the SQL of groups (`groups`) and contacts (`contacts`). Names and descriptions are cleaned and
checked by Postgres (triggers in supabase/migrations/20261129000400_content_rules.sql)."""
