"""Chat templates of the tiny test models and the demo model, one per tool-calling style.

Owns: the Jinja templates `core.models.tiny` writes. All share ChatML framing (`<|im_start|>role
... <|im_end|>`, the tiny tokenizer's special tokens), so a conversation without tools renders the
same in every style; tools, assistant tool calls and tool results render the way each family's
real template does:

- "hermes" (Qwen2.5 / Hermes): `<tools>` JSON lines in the system prompt, calls as
  `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, results as `<tool_response>`
  blocks in a user turn.
- "llama3" (Llama 3.1): "Environment: ipython" in the system prompt, the tool JSON and the
  `{"name": ..., "parameters": ...}` instruction in the first user message, calls as that JSON,
  results in an `ipython` turn.
- "mistral" (Mistral v0.3): `[AVAILABLE_TOOLS] [...][/AVAILABLE_TOOLS]` before the last user
  message, calls as `[TOOL_CALLS] [{"name", "arguments", "id"}]`, results as
  `[TOOL_RESULTS] {"content", "call_id"}[/TOOL_RESULTS]`.
- "none": ignores tools entirely (like Llama 2's template): a model served with it refuses them.
"""

from __future__ import annotations

TOOL_STYLES = ("hermes", "llama3", "mistral", "none")

_TEXT_MACRO = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{- content -}}"
    "{%- elif content is iterable -%}"
    "{%- for part in content -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
)
_PLAIN_TURN = ("{{- '<|im_start|>' + message['role'] + '\\n' + text(message['content']) "
               "+ '<|im_end|>\\n' -}}")
_GENERATION_PROMPT = (
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")

_HERMES_SYSTEM = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- text(messages[0]['content']) -}}"
    "{%- else -%}{{- 'You are a helpful assistant.' -}}{%- endif -%}"
    "{{- '\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user "
    "query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' -}}"
    "{%- endif -%}"
)
_HERMES_MESSAGES = (
    "{%- for message in messages -%}"
    "{%- if tools and loop.first and message['role'] == 'system' -%}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{{- '<|im_start|>assistant' -}}"
    "{%- if message['content'] -%}{{- '\\n' + text(message['content']) -}}{%- endif -%}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set call = call['function'] if call.get('function') else call -%}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' "
    "+ (call['arguments'] | tojson) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}"
    "{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + text(message['content']) + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}"
    "{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- else -%}" + _PLAIN_TURN +
    "{%- endif -%}"
    "{%- endfor -%}"
)

_LLAMA3_MESSAGES = (
    "{%- set ns = namespace(first_user=true) -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\nEnvironment: ipython\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- '\\n' + text(messages[0]['content']) -}}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if tools and loop.first and message['role'] == 'system' -%}"
    "{%- elif tools and message['role'] == 'user' and ns.first_user -%}"
    "{%- set ns.first_user = false -%}"
    "{{- '<|im_start|>user\\nGiven the following functions, please respond with a JSON for a "
    "function call with its proper arguments that best answers the given prompt.\\n\\nRespond "
    "in the format {\"name\": function name, \"parameters\": dictionary of argument name and "
    "its value}.Do not use variables.\\n\\n' -}}"
    "{%- for tool in tools -%}{{- (tool | tojson(indent=4)) + '\\n\\n' -}}{%- endfor -%}"
    "{{- text(message['content']) + '<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set call = call['function'] if call.get('function') else call -%}"
    "{%- if not loop.first -%}{{- '; ' -}}{%- endif -%}"
    "{{- '{\"name\": \"' + call['name'] + '\", \"parameters\": ' + (call['arguments'] | tojson)"
    " + '}' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif message['role'] in ('tool', 'ipython') -%}"
    "{{- '<|im_start|>ipython\\n' -}}"
    "{%- if message['content'] is mapping -%}{{- message['content'] | tojson -}}"
    "{%- else -%}{{- text(message['content']) -}}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- else -%}" + _PLAIN_TURN +
    "{%- endif -%}"
    "{%- endfor -%}"
)

_MISTRAL_MESSAGES = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for message in messages -%}"
    "{%- if tools and message['role'] == 'user' and loop.index0 == ns.last_user -%}"
    "{{- '<|im_start|>user\\n[AVAILABLE_TOOLS] ' + (tools | tojson) + '[/AVAILABLE_TOOLS]' "
    "+ text(message['content']) + '<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'assistant' and message.get('tool_calls') -%}"
    "{{- '<|im_start|>assistant\\n[TOOL_CALLS] [' -}}"
    "{%- for call in message['tool_calls'] -%}"
    "{%- set function = call['function'] if call.get('function') else call -%}"
    "{%- if not loop.first -%}{{- ', ' -}}{%- endif -%}"
    "{{- '{\"name\": \"' + function['name'] + '\", \"arguments\": ' "
    "+ (function['arguments'] | tojson) + ', \"id\": \"' + (call.get('id') or '') + '\"}' -}}"
    "{%- endfor -%}"
    "{{- ']<|im_end|>\\n' -}}"
    "{%- elif message['role'] == 'tool' -%}"
    "{{- '<|im_start|>tool\\n[TOOL_RESULTS] {\"content\": ' + (text(message['content']) | tojson)"
    " + ', \"call_id\": \"' + (message.get('tool_call_id') or '') + '\"}[/TOOL_RESULTS]"
    "<|im_end|>\\n' -}}"
    "{%- else -%}" + _PLAIN_TURN +
    "{%- endif -%}"
    "{%- endfor -%}"
)

_PLAIN_MESSAGES = "{%- for message in messages -%}" + _PLAIN_TURN + "{%- endfor -%}"

_BODIES = {"hermes": _HERMES_SYSTEM + _HERMES_MESSAGES, "llama3": _LLAMA3_MESSAGES,
           "mistral": _MISTRAL_MESSAGES, "none": _PLAIN_MESSAGES}


def chat_template(tool_style: str) -> str:
    """The Jinja chat template of one tool-calling style (see the module docstring)."""
    if tool_style not in _BODIES:
        raise ValueError(f"unknown tool style {tool_style!r}; expected one of {TOOL_STYLES}")
    return "{{- bos_token -}}" + _TEXT_MACRO + _BODIES[tool_style] + _GENERATION_PROMPT
