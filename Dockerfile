# One image for the migrate step, the worker, beat and the dashboard.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY orchestration ./orchestration
COPY migrations ./migrations
RUN pip install -e ".[web]" && useradd --create-home --uid 10001 orchestration \
    && mkdir -p /var/lib/orchestration && chown orchestration /var/lib/orchestration
USER orchestration
CMD ["orchestration", "--help"]
