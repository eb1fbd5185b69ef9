"""Validation of Tandem's response bodies against OpenAI's published OpenAPI document.

Owns: loading the pinned subset of the document (`openai/openapi-subset.json`, written by
`scripts/pin_openai_schemas.py` with its source commit) and validating a body against one of its
component schemas with a real JSON Schema validator (jsonschema, Draft 2020-12, `$ref`s resolved
through `referencing`). The document is OpenAPI 3.1 but still marks some fields with 3.0's
`nullable: true`; such a field takes null as the document means it to (a strict 3.1 validator
would ignore the keyword and reject the null). Formats are not checked (`unixtime` is OpenAI's
own).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import jsonschema
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SUBSET_PATH = Path(__file__).parent / "openai" / "openapi-subset.json"
DOCUMENT_URI = "urn:openai-openapi"


def _honour_nullable(node):
    """`{..., "nullable": true}` → `{"anyOf": [{...}, {"type": "null"}]}`, everywhere."""
    if isinstance(node, list):
        return [_honour_nullable(item) for item in node]
    if not isinstance(node, dict):
        return node
    rewritten = {key: _honour_nullable(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable") is True:
        return {"anyOf": [rewritten, {"type": "null"}]}
    return rewritten


@cache
def document() -> dict:
    """The pinned subset, with `nullable` honoured."""
    return _honour_nullable(json.loads(SUBSET_PATH.read_text()))


@cache
def _validator(name: str) -> jsonschema.Draft202012Validator:
    if name not in document()["components"]["schemas"]:
        raise KeyError(f"{name} is not in the pinned subset (scripts/pin_openai_schemas.py ROOTS)")
    registry = Registry().with_resource(
        DOCUMENT_URI, Resource.from_contents(document(), default_specification=DRAFT202012))
    return jsonschema.Draft202012Validator(
        {"$ref": f"{DOCUMENT_URI}#/components/schemas/{name}"}, registry=registry)


def violations(name: str, body: dict) -> list[str]:
    """Every place where `body` breaks the schema `name` (empty when it conforms)."""
    found: list[str] = []
    for error in _validator(name).iter_errors(copy.deepcopy(body)):
        for leaf in _deepest(error):
            message = leaf.message if len(leaf.message) < 300 else (
                f"{leaf.message[:120]} … {leaf.message[-120:]}")
            line = f"{'/'.join(map(str, leaf.absolute_path)) or '<root>'}: {message}"
            if line not in found:
                found.append(line)
    return found


def _deepest(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """The leaf errors of an anyOf/oneOf failure that reach deepest into the body: those of the
    branch that matched furthest (not "is not of type 'null'" from its null branch)."""
    leaves, pending = [], [error]
    while pending:
        current = pending.pop()
        if current.context:
            pending.extend(current.context)
        else:
            leaves.append(current)
    depth = max(len(leaf.absolute_path) for leaf in leaves)
    return [leaf for leaf in leaves if len(leaf.absolute_path) == depth]


def source_commit() -> str:
    return json.loads(SUBSET_PATH.read_text())["x-source"]["commit"]
