"""A labelled set of agent memories for ``bench/quality.py``, written for this
benchmark (not taken from a corpus): facts an agent learns while working on code and
infrastructure.

Each entry is ``(a, b, variant)``: ``a`` and ``b`` say the same thing in different
words (they should merge; where they state a value, ``b`` often spells it another way:
"40 s" and "40 seconds"); ``variant`` is ``a`` with one value changed, a different
fact that embeds almost like ``a`` (it must not merge with ``a`` or ``b``), or
``None``. Sentences of different entries are unrelated and must not merge either.

The set was written together with the value guard, so it plants the failures the
guard is meant to catch; the last entries are paraphrases that round or convert a
value ("1,187,000" and "roughly 1.2 million", "64 GB" and "64 GiB"), which the guard
wrongly keeps apart: they measure what it costs.
"""

FACTS: list[tuple[str, str, str | None]] = [
    # durations
    (
        "The full CI build of the api service takes about 40 s.",
        "Building the api service in CI needs roughly 40 seconds.",
        "The full CI build of the api service takes about 4 min.",
    ),
    (
        "Integration tests time out after 120 s when Redis is not running.",
        "Without a running Redis the integration tests hit their 2 min timeout.",
        "Integration tests time out after 30 s when Redis is not running.",
    ),
    (
        "The nightly backup job runs for 3 hours on the production database.",
        "On the production database the nightly backup takes 3 h to finish.",
        "The nightly backup job runs for 5 hours on the production database.",
    ),
    (
        "Cold starts of the image resizer Lambda add 800 ms to the first request.",
        "The first request to the image resizer Lambda is 800 milliseconds slower because of the cold start.",
        "Cold starts of the image resizer Lambda add 2 s to the first request.",
    ),
    (
        "Session tokens expire after 15 minutes of inactivity.",
        "An idle session token becomes invalid after 15 min.",
        "Session tokens expire after 30 minutes of inactivity.",
    ),
    (
        "The search index is rebuilt every 6 hours by a cron job.",
        "A cron job rebuilds the search index every 6 h.",
        "The search index is rebuilt every 12 hours by a cron job.",
    ),
    (
        "Webhook deliveries are retried for up to 3 days before they are dropped.",
        "A webhook delivery that keeps failing is retried for 3 days, then dropped.",
        "Webhook deliveries are retried for up to 7 days before they are dropped.",
    ),
    # counts and limits
    (
        "The public API allows 100 requests per minute per key.",
        "Each API key may make at most 100 requests a minute on the public API.",
        "The public API allows 1,000 requests per minute per key.",
    ),
    (
        "The upload endpoint rejects files larger than 25 MB.",
        "Files over 25MB are refused by the upload endpoint.",
        "The upload endpoint rejects files larger than 250 MB.",
    ),
    (
        "The worker pool runs 8 processes on each node.",
        "Each node runs a worker pool of 8 processes.",
        "The worker pool runs 16 processes on each node.",
    ),
    (
        "The orders table holds about 1,200,000 rows.",
        "There are roughly 1.2 million rows in the orders table.",
        "The orders table holds about 12,000,000 rows.",
    ),
    (
        "Pagination on the admin list pages is capped at 50 items per page.",
        "Admin list pages show at most 50 items on each page.",
        "Pagination on the admin list pages is capped at 200 items per page.",
    ),
    (
        "The login form locks an account after 5 failed attempts.",
        "After 5 wrong passwords in a row the login form locks the account.",
        "The login form locks an account after 10 failed attempts.",
    ),
    (
        "The PostgreSQL connection pool is limited to 20 connections per service.",
        "Each service may open at most 20 connections from its PostgreSQL pool.",
        "The PostgreSQL connection pool is limited to 50 connections per service.",
    ),
    (
        "Flaky test retries are limited to 2 per test in CI.",
        "CI retries a flaky test no more than 2 times.",
        "Flaky test retries are limited to 4 per test in CI.",
    ),
    # percentages
    (
        "Code coverage must stay above 85% for a pull request to merge.",
        "A pull request can only be merged while coverage is above 85 percent.",
        "Code coverage must stay above 70% for a pull request to merge.",
    ),
    (
        "The cache hit rate of the product catalogue is around 92%.",
        "About 92 percent of product catalogue reads are served from the cache.",
        "The cache hit rate of the product catalogue is around 62%.",
    ),
    (
        "Autoscaling adds a node when CPU usage stays above 75% for five minutes.",
        "When CPU stays over 75 percent for five minutes, autoscaling adds a node.",
        "Autoscaling adds a node when CPU usage stays above 90% for five minutes.",
    ),
    # sizes and memory
    (
        "The embedding worker needs 2 GB of memory per process.",
        "Each embedding worker process uses 2GB of RAM.",
        "The embedding worker needs 8 GB of memory per process.",
    ),
    (
        "Docker images for the frontend are about 180 MB after the multi-stage build.",
        "After the multi-stage build the frontend Docker image weighs roughly 180MB.",
        "Docker images for the frontend are about 900 MB after the multi-stage build.",
    ),
    (
        "Log files are rotated once they reach 100 MB.",
        "A log file is rotated when it grows to 100MB.",
        "Log files are rotated once they reach 1 GB.",
    ),
    # versions
    (
        "The project requires Python 3.11 or newer because it uses StrEnum.",
        "Because of StrEnum the code needs at least Python 3.11.",
        "The project requires Python 3.12 or newer because it uses StrEnum.",
    ),
    (
        "Upgrading SQLAlchemy to 2.0.25 fixed the connection leak in the reporting job.",
        "The connection leak in the reporting job went away with SQLAlchemy v2.0.25.",
        "Upgrading SQLAlchemy to 2.0.31 fixed the connection leak in the reporting job.",
    ),
    (
        "The mobile app stopped crashing on startup after release 4.2.1.",
        "Since version 4.2.1 the mobile app no longer crashes at startup.",
        "The mobile app stopped crashing on startup after release 4.3.0.",
    ),
    (
        "Node 18 is the oldest runtime the build scripts support.",
        "The build scripts do not work on anything older than Node 18.",
        "Node 20 is the oldest runtime the build scripts support.",
    ),
    (
        "Pin numpy below 2.0 for the legacy analytics notebooks.",
        "The legacy analytics notebooks need a numpy version lower than 2.0.",
        "Pin numpy below 1.26 for the legacy analytics notebooks.",
    ),
    # paths and files
    (
        "The nginx configuration for the gateway lives in /etc/nginx/conf.d/gateway.conf.",
        "Gateway settings for nginx are kept in /etc/nginx/conf.d/gateway.conf.",
        "The nginx configuration for the gateway lives in /etc/nginx/sites-enabled/gateway.conf.",
    ),
    (
        "Database migrations are generated into migrations/versions/ with alembic revision.",
        "alembic revision writes new migration files to migrations/versions/.",
        "Database migrations are generated into db/migrations/versions/ with alembic revision.",
    ),
    (
        "The feature flags are read from config/flags.yaml at startup.",
        "At startup the service loads its feature flags from config/flags.yaml.",
        "The feature flags are read from config/features.yaml at startup.",
    ),
    (
        "Test fixtures for the parser are stored under tests/fixtures/parser/.",
        "The parser's test fixtures live in tests/fixtures/parser/.",
        "Test fixtures for the parser are stored under tests/data/parser/.",
    ),
    # identifiers, hashes, codes
    (
        "The regression in the payment flow was introduced by commit 3f9c2ab.",
        "Commit 3f9c2ab is where the payment flow regression came from.",
        "The regression in the payment flow was introduced by commit 8d41e07.",
    ),
    (
        "Rust error E0502 here means the buffer is borrowed mutably while it is read.",
        "When rustc reports E0502 in this module, the buffer is read while mutably borrowed.",
        "Rust error E0499 here means the buffer is borrowed mutably while it is read.",
    ),
    (
        "Set ORCHESTRATION_LOG_FORMAT to json in production so the log pipeline can parse it.",
        "In production ORCHESTRATION_LOG_FORMAT must be json for the log pipeline to parse the lines.",
        "Set ORCHESTRATION_LOG_LEVEL to json in production so the log pipeline can parse it.",
    ),
    (
        "The outage was tracked in incident INC-4821 and fixed by rolling back.",
        "Incident INC-4821 covered the outage; a rollback fixed it.",
        "The outage was tracked in incident INC-5130 and fixed by rolling back.",
    ),
    (
        "Issue #1432 explains why the scheduler skips daylight saving transitions.",
        "Why the scheduler skips daylight saving transitions is explained in issue #1432.",
        "Issue #1587 explains why the scheduler skips daylight saving transitions.",
    ),
    (
        "The staging cluster is pinned to AMI ami-0c55b159cbfafe1f0.",
        "Staging cluster nodes use the image ami-0c55b159cbfafe1f0.",
        "The staging cluster is pinned to AMI ami-0a1b2c3d4e5f67890.",
    ),
    # network
    (
        "The metrics exporter listens on port 9100.",
        "Port 9100 is where the metrics exporter accepts connections.",
        "The metrics exporter listens on port 9187.",
    ),
    (
        "The internal package index is at https://pypi.internal.example.com/simple.",
        "Packages are installed from the internal index https://pypi.internal.example.com/simple.",
        "The internal package index is at https://pypi.mirror.example.com/simple.",
    ),
    (
        "The legacy billing service only accepts TLS 1.2 connections.",
        "Connections to the legacy billing service must use TLS 1.2.",
        "The legacy billing service only accepts TLS 1.3 connections.",
    ),
    # dates and money
    (
        "The old reporting API is switched off on 2026-03-31.",
        "On 2026-03-31 the old reporting API will be shut down.",
        "The old reporting API is switched off on 2026-06-30.",
    ),
    (
        "The monthly cloud budget for the data team is $12,000.",
        "The data team may spend $12000 a month on cloud resources.",
        "The monthly cloud budget for the data team is $20,000.",
    ),
    (
        "Daily database snapshots are taken at 03:00 UTC.",
        "A snapshot of the database is taken every day at 03:00 UTC.",
        "Daily database snapshots are taken at 05:00 UTC.",
    ),
    # facts without values
    (
        "Always run the linter before pushing, the CI rejects unformatted code.",
        "CI refuses code that is not formatted, so lint before every push.",
        None,
    ),
    (
        "The staging database is shared by all teams, never run destructive migrations there.",
        "Destructive migrations must not run on staging because every team shares that database.",
        None,
    ),
    (
        "Use the read replica for analytics queries to keep load off the primary.",
        "Analytics queries should go to the read replica so the primary is not loaded.",
        None,
    ),
    (
        "The payment provider's sandbox randomly returns timeouts, retry before assuming a bug.",
        "Timeouts from the payment sandbox happen at random; retry first, it is usually not our bug.",
        None,
    ),
    (
        "Feature branches are deleted automatically after they are merged.",
        "Merged feature branches get removed automatically.",
        None,
    ),
    (
        "The frontend reads the API base URL from an environment variable at build time.",
        "At build time the frontend takes the API base URL from an environment variable.",
        None,
    ),
    (
        "Secrets are injected by the vault agent, never commit them to the repository.",
        "Never put secrets in the repository; the vault agent injects them.",
        None,
    ),
    (
        "Time zones are stored as UTC in the database and converted in the UI.",
        "The database keeps every timestamp in UTC and the UI converts it for display.",
        None,
    ),
    # paraphrases that round or convert a value: the guard keeps them apart (its cost)
    (
        "The orders export writes 1,187,000 rows each night.",
        "Every night the orders export produces roughly 1.2 million rows.",
        None,
    ),
    (
        "Each of the 3 database nodes has 64 GB of memory.",
        "The 3 nodes of the database cluster have 64 GiB of RAM each.",
        None,
    ),
    (
        "The codemod migration changed 3,402 files in the monorepo.",
        "About 3.4k files in the monorepo were touched by the codemod migration.",
        None,
    ),
    (
        "The release freeze starts 2 weeks before the launch.",
        "Fourteen days before launch the release freeze begins, 14 days of no merges.",
        None,
    ),
]
