"""Synthetic projects and memories whose right consolidation is known in advance.

Each project holds, deterministically for a given seed:
- duplicate groups (about 10% of its memories, 2-4 members of one type, pairwise
  cosine about 0.97) that must each become one consolidated memory;
- near-miss pairs at cosine 0.85, just under the default 0.90 threshold, that must
  not be merged;
- stale memories (not reused for 200 days, reused fewer than 3 times) that must be
  archived, and stale but often reused ones that must not;
- fresh unrelated memories that must stay as they are.
Project kinds: ``eligible`` (threshold below its count), ``disabled``,
``under_threshold``, and on request ``failing`` (malformed options).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session

from orchestration.consolidation.embeddings import to_bytes
from orchestration.store.models import Project, TaskMemory
from orchestration.store.types import utcnow

BASE_TYPES = ("error_fix", "discovery", "decision", "learning", "warning", "codebase_knowledge")
WORDS = [
    "cache",
    "index",
    "retry",
    "timeout",
    "schema",
    "migration",
    "worker",
    "queue",
    "lock",
    "batch",
    "token",
    "parser",
    "request",
    "response",
    "handler",
    "config",
    "deploy",
    "build",
    "test",
    "fixture",
    "session",
    "commit",
    "rollback",
    "query",
    "cursor",
    "pool",
    "thread",
    "signal",
    "event",
    "buffer",
    "stream",
    "socket",
    "header",
    "payload",
]
NEAR_MISS_SIMILARITY = 0.85
STALE_DAYS = 200


@dataclass
class ProjectManifest:
    id: str
    name: str
    kind: str
    memories: int
    groups: list[list[str]] = field(default_factory=list)
    near_miss: list[list[str]] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    stale_reused: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _kinds(projects: int, failing: bool) -> list[str]:
    kinds = ["eligible"] * projects
    if projects >= 2:
        kinds[-1] = "under_threshold"
    if projects >= 3:
        kinds[-2] = "disabled"
    if failing:
        kinds.append("failing")
    return kinds


class _Generator:
    def __init__(self, seed: int, dim: int, now: datetime):
        self.rng = np.random.default_rng(seed)
        self.dim = dim
        self.now = now

    def unit(self) -> np.ndarray:
        v = self.rng.standard_normal(self.dim)
        return v / np.linalg.norm(v)

    def near(self, base: np.ndarray, noise: float = 0.15) -> np.ndarray:
        v = base + noise * self.unit()
        return v / np.linalg.norm(v)

    def at_similarity(self, base: np.ndarray, similarity: float) -> np.ndarray:
        u = self.unit()
        u = u - (u @ base) * base
        u /= np.linalg.norm(u)
        return similarity * base + np.sqrt(1 - similarity**2) * u

    def sentence(self, tag: str) -> str:
        words = " ".join(self.rng.choice(WORDS, size=5))
        return f"{tag}: {words}."

    def fresh_time(self) -> datetime:
        return self.now - timedelta(days=float(self.rng.uniform(0, 30)))


def seed(
    session: Session,
    projects: int,
    memories: int,
    seed: int = 0,
    *,
    dim: int = 384,
    failing: bool = False,
    now: datetime | None = None,
) -> list[ProjectManifest]:
    """Insert ``projects`` projects of ``memories`` memories each; returns what was planted."""
    if projects < 1 or memories < 4:
        raise ValueError("need at least 1 project and 4 memories per project")
    gen = _Generator(seed, dim, now or utcnow())
    manifests = []
    for number, kind in enumerate(_kinds(projects, failing)):
        manifests.append(_seed_project(session, gen, number, kind, memories))
    return manifests


def _seed_project(session: Session, gen: _Generator, number: int, kind: str, count: int) -> ProjectManifest:
    project_id = uuid.UUID(int=int(gen.rng.integers(0, 2**63)) << 64 | number)
    threshold = {"under_threshold": count * 2}.get(kind, count // 2)
    options = {"similarity_threshold": "high"} if kind == "failing" else None
    session.add(
        Project(
            id=project_id,
            name=f"project-{number:03d}-{kind}",
            consolidation_enabled=kind != "disabled",
            consolidation_threshold=threshold,
            consolidation_options=options,
            created_at=gen.now - timedelta(days=365),
        )
    )
    session.flush()
    manifest = ProjectManifest(id=str(project_id), name=f"project-{number:03d}-{kind}", kind=kind, memories=count)
    rows: list[dict[str, Any]] = []

    def add(vector: np.ndarray, memory_type: str, content: str, **extra: Any) -> str:
        memory_id = uuid.UUID(int=int(gen.rng.integers(0, 2**63)) << 64 | len(rows) << 16 | number)
        row = {
            "id": memory_id,
            "project_id": project_id,
            "memory_type": memory_type,
            "content": content,
            "embedding": to_bytes(vector),
            "tags": [str(t) for t in gen.rng.choice(WORDS, size=2, replace=False)],
            "file_links": [f"src/{gen.rng.choice(WORDS)}_{len(rows)}.py"],
            "reused_count": int(gen.rng.integers(3, 12)),
            "last_reused_at": gen.fresh_time(),
            "learned_at": gen.fresh_time(),
            "version": 1,
        }
        row.update(extra)
        rows.append(row)
        return str(memory_id)

    budget = {
        "groups": max(2, count // 10),
        "near": max(1, count // 50) * 2,
        "stale": max(1, count // 10),
        "stale_reused": max(1, count // 50),
    }
    while sum(len(g) for g in manifest.groups) < budget["groups"]:
        size = int(gen.rng.integers(2, 5))
        base, memory_type = gen.unit(), str(gen.rng.choice(BASE_TYPES))
        shared = [gen.sentence(f"Shared {len(manifest.groups)}") for _ in range(2)]
        manifest.groups.append(
            [
                add(
                    gen.near(base),
                    memory_type,
                    " ".join([*shared, gen.sentence("Detail")]),
                    reused_count=10 - k,
                )
                for k in range(size)
            ]
        )
    for _ in range(budget["near"] // 2):
        a, memory_type = gen.unit(), str(gen.rng.choice(BASE_TYPES))
        b = gen.at_similarity(a, NEAR_MISS_SIMILARITY)
        manifest.near_miss.append([add(v, memory_type, gen.sentence("Near miss")) for v in (a, b)])
    old = gen.now - timedelta(days=STALE_DAYS)
    for _ in range(budget["stale"]):
        manifest.stale.append(
            add(
                gen.unit(),
                str(gen.rng.choice(BASE_TYPES)),
                gen.sentence(f"Stale {len(rows)}"),
                reused_count=int(gen.rng.integers(0, 3)),
                last_reused_at=None,
                learned_at=old,
            )
        )
    for _ in range(budget["stale_reused"]):
        manifest.stale_reused.append(
            add(
                gen.unit(),
                str(gen.rng.choice(BASE_TYPES)),
                gen.sentence(f"Old but used {len(rows)}"),
                reused_count=5,
                last_reused_at=old,
                learned_at=old,
            )
        )
    while len(rows) < count:
        add(gen.unit(), str(gen.rng.choice(BASE_TYPES)), gen.sentence(f"Unique {len(rows)}"))
    session.execute(insert(TaskMemory), rows)
    manifest.memories = len(rows)
    return manifest


def plant_texts(
    session: Session, name: str, texts: list[str], embeddings: list[bytes | None], memory_type: str = "learning"
) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A project whose active memories are ``texts`` with these embeddings (``None``: the
    lexical fallback), fresh, the first the most reused; its id and the memories' ids."""
    now = utcnow()
    project_id, ids = uuid.uuid4(), [uuid.uuid4() for _ in texts]
    session.add(Project(id=project_id, name=name))
    session.flush()
    session.execute(
        insert(TaskMemory),
        [
            {
                "id": memory_id,
                "project_id": project_id,
                "memory_type": memory_type,
                "content": text,
                "embedding": embedding,
                "reused_count": len(texts) - k,
                "learned_at": now - timedelta(days=1),
                "last_reused_at": now,
            }
            for k, (memory_id, text, embedding) in enumerate(zip(ids, texts, embeddings, strict=True))
        ],
    )
    return project_id, ids
