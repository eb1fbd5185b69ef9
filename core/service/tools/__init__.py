"""Tool calling in the core: the call syntax of each model family, streaming parsers that turn a
choice's text into content and tool-call deltas, and grammars that force calls.

The servicer builds one `ToolCallParser` per choice of a request that offers tools; the request
converter asks `tool_call_grammar` for the constraint of `tool_choice` "required" or a named
function. Nothing here touches the engine.
"""

from core.service.tools.grammar import tool_call_grammar
from core.service.tools.parser import ParsedDelta, ToolCallDelta, ToolCallParser
from core.service.tools.syntax import PARSER_NAMES, ToolSyntax, detect_syntax, syntax_named

__all__ = ["PARSER_NAMES", "ParsedDelta", "ToolCallDelta", "ToolCallParser", "ToolSyntax",
           "detect_syntax", "syntax_named", "tool_call_grammar"]
