"""Chat templates of the tiny test models and the demo model: one per tool-calling style, and
Qwen3's thinking template.

Owns: the Jinja templates `core.models.tiny` writes. All share ChatML framing (`<|im_start|>role
... <|im_end|>`, the tiny tokenizer's special tokens), so a conversation without tools renders the
same in every tool style (`TOOL_STYLES`); tools, assistant tool calls and tool results render the
way each family's real template does:

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

"qwen3" is Qwen3's own template, compacted: Hermes tool markup (no default system prompt) plus
reasoning. Assistant turns after the last user query open with a `<think>…</think>` block (the
message's `reasoning_content`, else the think block its content starts with); earlier turns lose
theirs; `enable_thinking=False` ends the generation prompt with an empty think block. It is not
one of `TOOL_STYLES`: it renders a plain conversation differently (the last assistant turn's
empty think block).

"gemma3" is Gemma 3's own template, verbatim (google/gemma-3-1b-it's tokenizer_config.json):
`<start_of_turn>user|model ... <end_of_turn>` turns, a system message folded into the first user
turn, roles that must alternate (else `raise_exception`), no tools.
"""

from __future__ import annotations

TOOL_STYLES = ("hermes", "llama3", "mistral", "none")  # differ only where tools are rendered
STYLES = (*TOOL_STYLES, "qwen3", "gemma3")  # every template `chat_template` writes

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

# The tool listing that ends the system turn (Qwen2.5's and Qwen3's alike). It begins inside a
# Jinja string literal, which the including template opens ("{{- '").
_HERMES_TOOLS = (
    "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\"name\": "
    "<function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' -}}"
)
_HERMES_SYSTEM = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}{{- text(messages[0]['content']) -}}"
    "{%- else -%}{{- 'You are a helpful assistant.' -}}{%- endif -%}"
    "{{- '\\n\\n" + _HERMES_TOOLS +
    "{%- endif -%}"
)
# Consecutive tool results share one user turn of `<tool_response>` blocks
_HERMES_TOOL_RESULT = (
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' -%}"
    "{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + text(message['content']) + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' -%}"
    "{{- '<|im_end|>\\n' -}}{%- endif -%}"
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
    "{%- elif message['role'] == 'tool' -%}" + _HERMES_TOOL_RESULT +
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

# Qwen3: the system turn exists with tools only, and has no default text
_QWEN3_SYSTEM = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{{- text(messages[0]['content']) + '\\n\\n' -}}{%- endif -%}{{- '" + _HERMES_TOOLS +
    "{%- endif -%}"
)
# The last user query (a user turn that is not only tool results): later turns keep reasoning
_QWEN3_LAST_QUERY = (
    "{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) -%}"
    "{%- for message in messages[::-1] -%}"
    "{%- set content = text(message['content']) -%}"
    "{%- if ns.multi_step_tool and message['role'] == 'user' and not ("
    "content.startswith('<tool_response>') and content.endswith('</tool_response>')) -%}"
    "{%- set ns.multi_step_tool = false -%}"
    "{%- set ns.last_query_index = messages|length - 1 - loop.index0 -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
# An assistant turn: its reasoning (the field, or split off the content), then content and calls
_QWEN3_ASSISTANT = (
    "{%- set content = text(message['content']) -%}"
    "{%- set reasoning_content = '' -%}"
    "{%- if message.get('reasoning_content') is string -%}"
    "{%- set reasoning_content = message['reasoning_content'] -%}"
    "{%- elif '</think>' in content -%}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n')"
    ".split('<think>')[-1].lstrip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) -%}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') "
    "+ '\\n</think>\\n\\n' + content.lstrip('\\n') -}}"
    "{%- else -%}{{- '<|im_start|>assistant\\n' + content -}}{%- endif -%}"
    "{%- for call in message.get('tool_calls') or [] -%}"
    "{%- if not loop.first or content -%}{{- '\\n' -}}{%- endif -%}"
    "{%- set call = call['function'] if call.get('function') else call -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + call['name'] + '\", \"arguments\": ' -}}"
    "{%- if call['arguments'] is string -%}{{- call['arguments'] -}}"
    "{%- else -%}{{- call['arguments'] | tojson -}}{%- endif -%}"
    "{{- '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
)
_QWEN3_MESSAGES = (
    _QWEN3_LAST_QUERY +
    "{%- for message in messages -%}"
    "{%- if tools and loop.first and message['role'] == 'system' -%}"
    "{%- elif message['role'] == 'assistant' -%}" + _QWEN3_ASSISTANT +
    "{%- elif message['role'] == 'tool' -%}" + _HERMES_TOOL_RESULT +
    "{%- else -%}" + _PLAIN_TURN +
    "{%- endif -%}"
    "{%- endfor -%}"
)
_QWEN3_GENERATION_PROMPT = (
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}"
    "{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)

_BODIES = {"hermes": _HERMES_SYSTEM + _HERMES_MESSAGES + _GENERATION_PROMPT,
           "llama3": _LLAMA3_MESSAGES + _GENERATION_PROMPT,
           "mistral": _MISTRAL_MESSAGES + _GENERATION_PROMPT,
           "none": _PLAIN_MESSAGES + _GENERATION_PROMPT,
           "qwen3": _QWEN3_SYSTEM + _QWEN3_MESSAGES + _QWEN3_GENERATION_PROMPT}


# Gemma 3's template as its checkpoints ship it (its own BOS, framing and whitespace)
GEMMA3_TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def chat_template(style: str) -> str:
    """The Jinja chat template of one style, a tool-calling style, "qwen3" or "gemma3" (module
    docstring)."""
    if style == "gemma3":
        return GEMMA3_TEMPLATE
    if style not in _BODIES:
        raise ValueError(f"unknown template style {style!r}; expected one of {STYLES}")
    return "{{- bos_token -}}" + _TEXT_MACRO + _BODIES[style]
