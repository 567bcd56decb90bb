"""State kept per input partition: each user's recent items (issue 23)."""
