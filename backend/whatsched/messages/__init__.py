"""Messages as the API serves them: the JSON shape (built in SQL), list filters, and the reads
behind preview, stats and the dashboard. Routes live in whatsched.api.routes.messages."""
