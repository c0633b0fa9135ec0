"""What the WhatsApp bridge reports, as the database records it (queries)."""
