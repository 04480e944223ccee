"""Where blocks, observations and samples live: SQLite on one host, PostgreSQL for a fleet."""
