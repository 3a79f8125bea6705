"""The database: models, engines and sessions, migrations, kept counts, rows as JSON."""
