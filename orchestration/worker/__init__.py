"""The Celery side: the tasks (``tasks``), the base class that gives every task its id
parsing, log context and retry policy (``base``), and the request class through which
a worker's main process reports a job whose child process died (``requests``), and
its start-up hooks (``signals``). The app itself is ``orchestration.celery_app``."""
