"""Consolidating one project's memories (SPEC §5), with no Celery, locks or job rows.

- ``planning``: read the active memories once and decide what to merge and archive
  (``spaces`` groups the vectors, ``clustering`` finds the clusters);
- ``preview``: the dry run, a plan reported without writing;
- ``applying``: write a plan in batches, each batch one transaction with its audit rows;
- ``text``: how the sources of a merge become one memory's text and lists;
- ``audit``: the audit rows, rolling a job back, pruning old rows;
- ``options``, ``embeddings``, ``projects``: per-project options, vectors, which
  projects may be consolidated.

The job that runs a consolidation (its lock, its row, its retries) is
``orchestration.jobs``.
"""
