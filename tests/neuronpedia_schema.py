"""Neuronpedia's graph upload rules, checked on a graph JSON document: its published draft-07
schema (tests/data/neuronpedia/graph-schema.json, source in the README beside it), validated as
its upload and validator pages do (Ajv, draft-07), plus what its save route and the browser add."""

from __future__ import annotations

import json
import re
from pathlib import Path

from jsonschema import Draft7Validator

SCHEMA_PATH = Path(__file__).parent / "data" / "neuronpedia" / "graph-schema.json"
UPLOAD_NAME = re.compile(r"^[a-zA-Z0-9_.-]+$")
LINKED_TYPES = {"cross layer transcoder", "mlp reconstruction error"}


def neuronpedia_graph_problems(document: dict) -> list[str]:
    """Every reason Neuronpedia would refuse or mis-draw ``document`` (empty: it would load)."""
    schema = json.loads(SCHEMA_PATH.read_text())
    problems = [f"schema: {'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in Draft7Validator(schema).iter_errors(document)]
    metadata = document.get("metadata", {})
    for field in ("scan", "slug"):
        if not UPLOAD_NAME.match(str(metadata.get(field, ""))):
            problems.append(f"metadata.{field} {metadata.get(field)!r} breaks ^[a-zA-Z0-9_.-]+$")
    try:
        json.dumps(document, allow_nan=False)  # the browser's JSON.parse refuses NaN / Infinity
    except ValueError as error:
        problems.append(f"not strict JSON: {error}")
    ids = [n.get("node_id") for n in document.get("nodes", [])]
    if len(ids) != len(set(ids)):
        problems.append("duplicate node_id")
    known = set(ids)
    linked: set[str] = set()
    for link in document.get("links", []):
        for end in ("source", "target"):
            if link.get(end) not in known:
                problems.append(f"dangling link {end} {link.get(end)!r}")
            linked.add(link.get(end))
    unlinked = [n["node_id"] for n in document.get("nodes", []) if n.get("feature_type") in LINKED_TYPES and n["node_id"] not in linked]
    if unlinked:
        problems.append(f"{len(unlinked)} feature/error nodes without a link, e.g. {unlinked[:3]}")
    return problems
