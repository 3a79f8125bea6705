"""POST the run summary to ``ORCHESTRATION_NOTIFY_URL`` (timeout, one retry).

A failed notification is logged as ``notify.failed`` and never fails the run.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from orchestration.logs import get_logger
from orchestration.settings import mask_url

TIMEOUT_S = 10.0
RETRY_DELAY_S = 2.0
log = get_logger("orchestration.nightly.notify")


def post_summary(url: str, summary: dict[str, Any], attempts: int = 2) -> bool:
    body = json.dumps(summary).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", "User-Agent": "orchestration"}
    )
    error = ""
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                response.read()
            return True
        except (urllib.error.URLError, OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if attempt < attempts:
                time.sleep(RETRY_DELAY_S)
    log.warning("notify.failed", url=mask_url(url), error=error, attempts=attempts)
    return False
