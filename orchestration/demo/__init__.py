"""The embedded demo (``make demo``): seeded synthetic projects, an in-process worker."""
