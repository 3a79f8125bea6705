"""What ran, as JSON documents: runs, jobs and projects keyed by their column names,
shared by the command line's ``--json``, the dashboard's pages and its ``/api/``. Only
reads: a read-only database role serves all of it."""
