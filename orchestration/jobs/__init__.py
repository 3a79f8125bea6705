"""A consolidation job's life, the same whether a Celery worker or ``orchestration
consolidate`` runs it: ``lifecycle`` (create, start an attempt, run it, end it),
``locks`` (the project lock an attempt leases), ``heartbeat`` (liveness of attempts
and received jobs), ``recovery`` (an attempt whose process died), ``progress`` (the
job row's progress). No Celery here."""
