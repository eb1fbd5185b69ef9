"""JSON Schema rewriting before a schema is compiled: closed objects by default.

Owns: `close_objects`, which gives every object schema that lists `properties` (or
`patternProperties`) and leaves `additionalProperties` unset an `"additionalProperties": false`,
as vLLM and SGLang do. JSON Schema's own default is open: a model that does not stop after the
last listed key may then write keys until max_tokens, and clients that send pydantic's schemas
(which leave it unset) get an unclosed object. An object that lists no keys (`{"type":
"object"}`: any object) stays open, and so do the members of an `allOf`, whose keys are the
union of its members' (closing each would leave only `{}`). The server's `--json-open-objects`
keeps JSON Schema's default instead.
"""

from __future__ import annotations

# keywords whose value is one subschema, a list of them, or a map of names to them
_ONE = ("additionalProperties", "items", "additionalItems", "contains", "not", "if", "then",
        "else", "unevaluatedProperties", "unevaluatedItems", "propertyNames")
_LISTS = ("anyOf", "oneOf", "prefixItems", "items")
_MAPS = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def close_objects(schema):
    """A copy of `schema` whose objects without `additionalProperties` are closed (see the
    module docstring); anything that is not a schema object comes back as it is."""
    return _closed(schema, close=True)


def _closed(schema, close: bool):
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if close and "additionalProperties" not in out and "unevaluatedProperties" not in out and (
            "properties" in out or "patternProperties" in out):
        out["additionalProperties"] = False
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = _closed(out[key], close=True)
    for key in _LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_closed(item, close=True) for item in out[key]]
    for key in _MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _closed(item, close=True) for name, item in out[key].items()}
    if isinstance(out.get("allOf"), list):  # the members' own subschemas close, not they
        out["allOf"] = [_closed(item, close=False) for item in out["allOf"]]
    return out
