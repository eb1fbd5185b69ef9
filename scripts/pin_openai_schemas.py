"""Pin the part of OpenAI's published OpenAPI document that Tandem's responses must conform to.

Reads `openapi.json` from a checkout of github.com/openai/openai-openapi and writes
`tests/contract/openai/openapi-subset.json`: the response schemas of the endpoints Tandem
serves (chat, completions, embeddings, models, Responses, errors) with every schema they
reference, unchanged, and the source commit. The conformance test validates against this copy,
so it runs offline and changes only when someone re-pins it:

    git clone https://github.com/openai/openai-openapi /tmp/openai-openapi
    python scripts/pin_openai_schemas.py /tmp/openai-openapi/openapi.json \
        --commit "$(git -C /tmp/openai-openapi rev-parse HEAD)"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "contract" / "openai" / "openapi-subset.json"
ROOTS = (
    "CreateChatCompletionResponse", "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse", "CreateEmbeddingResponse", "ListModelsResponse", "Model",
    "Response", "ResponseStreamEvent", "ResponseItemList", "ErrorResponse",
)
PREFIX = "#/components/schemas/"


def referenced(schemas: dict, roots: tuple[str, ...]) -> dict:
    """The roots and every schema reachable from them through `$ref`."""
    kept: dict = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in kept:
            continue
        kept[name] = schemas[name]
        stack = [schemas[name]]
        while stack:
            node = stack.pop()
            if isinstance(node, dict):
                ref = node.get("$ref")
                if isinstance(ref, str) and ref.startswith(PREFIX):
                    pending.append(ref[len(PREFIX):])
                stack.extend(node.values())
            elif isinstance(node, list):
                stack.extend(node)
    return dict(sorted(kept.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("openapi_json", type=Path, help="openapi.json of openai/openai-openapi")
    parser.add_argument("--commit", required=True, help="the source commit (40 hex digits)")
    args = parser.parse_args()
    document = json.loads(args.openapi_json.read_text())
    subset = {
        "x-source": {"repository": "https://github.com/openai/openai-openapi",
                     "commit": args.commit, "file": "openapi.json",
                     "openapi": document["openapi"], "version": document["info"]["version"],
                     "roots": list(ROOTS)},
        "components": {"schemas": referenced(document["components"]["schemas"], ROOTS)},
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(subset, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {len(subset['components']['schemas'])} schemas")


if __name__ == "__main__":
    main()
