"""What contacts write back, and the opt-outs it causes (the rules live in
supabase/migrations/20261129000900_replies_and_opt_out.sql)."""
