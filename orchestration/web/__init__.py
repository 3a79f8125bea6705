"""The read-only dashboard (``orchestration web``): runs, their job timelines, projects
and jobs as server-rendered pages with SVG charts, their JSON twins under ``/api/``,
Prometheus ``/metrics`` and ``/healthz``. Needs the ``web`` extra."""
