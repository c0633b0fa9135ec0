"""Analytics: the dashboard, messages over a day range and the reach of each group, counted by
SQL functions (public.analytics_*) in the caller's transaction."""
