"""Tool-call parsers on text the tiny models' own chat templates render (each family's syntax),
fed whole, a character at a time and in uneven pieces; and the call grammars, checked by
llguidance against the same text (alone, and as the alternative to a response format's
answer)."""

from __future__ import annotations

import json
import random
import re

import llguidance
import llguidance.hf
import pytest
from transformers import AutoTokenizer

from core.errors import InvalidParameter
from core.models.tiny import TOOL_STYLE
from core.service.tools import ToolCallParser, detect_syntax, syntax_named, tool_call_grammar
from core.service.tools.grammar import auto_calls_grammar, auto_tool_grammar
from core.structured import GrammarSpec
from core.structured.compiler import GrammarCompiler, grammar_text

WEATHER = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 20},
    "unit": {"type": "string", "enum": ["c", "f"]}}, "required": ["city", "unit"],
    "additionalProperties": False}
TIME = {"type": "object", "properties": {"zone": {"type": "string"}}, "required": ["zone"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_time", "parameters": TIME}}]
CALLS = [("get_weather", {"city": "Paris \"rive\" {gauche}", "unit": "c"}),
         ("get_time", {"zone": "Europe/Paris"})]
EXPECTED_PARSER = {"hermes": "hermes", "llama3": "llama3_json", "mistral": "mistral"}


@pytest.fixture(scope="module")
def tokenizers(tiny_models):
    return {variant: AutoTokenizer.from_pretrained(str(path))
            for variant, path in tiny_models.items()}


def assistant_turn(tokenizer, calls, content: str = "") -> str:
    """What the template writes for an assistant turn with these calls (the model's output)."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content,
                 "tool_calls": [{"id": f"call{i}", "type": "function", "function": {
                     "name": name, "arguments": args}} for i, (name, args) in enumerate(calls)]}]
    text = tokenizer.apply_chat_template(messages, tools=TOOLS, tokenize=False)
    return text.rsplit("<|im_start|>assistant\n", 1)[1].split("<|im_end|>")[0]


def pieces(text: str, how: str) -> list[str]:
    if how == "whole":
        return [text]
    if how == "chars":
        return list(text)
    rng, out, start = random.Random(len(text)), [], 0
    while start < len(text):
        size = rng.randint(1, 7)
        out.append(text[start:start + size])
        start += size
    return out


def parse(syntax_name: str, chunks: list[str], *, cut: bool = False, forced: bool = False):
    """(content, calls as [id, name, arguments], the deltas) of a stream of text chunks
    (`cut`: the choice ended by max_tokens)."""
    parser = ToolCallParser(syntax_named(syntax_name), forced=forced)
    content, calls, deltas = "", {}, []
    for result in [parser.feed(chunk) for chunk in chunks] + [parser.finish(cut=cut)]:
        content += result.content
        for delta in result.tool_calls:
            deltas.append(delta)
            call = calls.setdefault(delta.index, ["", "", ""])
            call[0] += delta.id
            call[1] += delta.name
            call[2] += delta.arguments
    return content, [calls[i] for i in sorted(calls)], deltas


@pytest.mark.parametrize("how", ["whole", "chars", "uneven"])
@pytest.mark.parametrize("variant", ["qwen2", "llama3", "mistral"])
def test_parsers_read_the_calls_their_template_writes(tokenizers, variant, how):
    tokenizer = tokenizers[variant]
    syntax = detect_syntax(tokenizer.chat_template)
    assert syntax is not None and syntax.name == EXPECTED_PARSER[TOOL_STYLE[variant]]
    calls = CALLS if variant != "llama3" else CALLS[:1]
    for wanted in (calls[:1], calls):
        text = assistant_turn(tokenizer, wanted)
        content, got, deltas = parse(syntax.name, pieces(text, how))
        assert content == ""
        assert [(name, json.loads(args)) for _, name, args in got] == wanted
        for call_id, _, _ in got:
            assert call_id.startswith("call_") and len(call_id) > 10
        firsts = [d for d in deltas if d.id]
        assert all(d.name for d in firsts) and len(firsts) == len(wanted)
        # the first delta of each call comes before any of its argument fragments
        for index in range(len(wanted)):
            of_call = [d for d in deltas if d.index == index]
            assert of_call[0].id and not any(d.id for d in of_call[1:])


@pytest.mark.parametrize("how", ["whole", "chars", "uneven"])
def test_content_before_a_call_streams_and_markup_never_leaks(tokenizers, how):
    text = assistant_turn(tokenizers["qwen2"], CALLS[:1], content="Let me check <b>that</b>.")
    assert text.startswith("Let me check <b>that</b>.\n<tool_call>")
    content, got, _ = parse("hermes", pieces(text, how))
    assert content == "Let me check <b>that</b>."
    assert got[0][1] == "get_weather"


@pytest.mark.parametrize("syntax_name,text", [
    ("hermes", "plain answer, no call < tool_call >"),
    ("hermes", "almost <tool_cal"),
    ("hermes", "<tool_call>\nnot json</tool_call>"),
    ("mistral", "[TOOL_CALLS] nope"),
    ("llama3_json", '{"answer": 42}'),
    ("llama3_json", "Sure. {\"name\": \"x\", \"parameters\": {}}"),
])
def test_text_that_is_not_a_call_is_content(syntax_name, text):
    for how in ("whole", "chars"):
        content, got, _ = parse(syntax_name, pieces(text, how))
        assert (content, got) == (text, [])


def test_llama3_python_tag_and_arguments_given_as_a_string():
    text = '<|python_tag|>{"name": "get_time", "parameters": "{\\"zone\\": \\"UTC\\"}"}'
    content, got, _ = parse("llama3_json", pieces(text, "chars"))
    assert content == "" and got[0][1:] == ["get_time", '{"zone": "UTC"}']


def test_a_truncated_call_keeps_what_was_streamed():
    content, got, _ = parse("hermes", ['<tool_call>\n{"name": "get_time", "arguments": {"zo'])
    assert content == "" and got[0][1:] == ["get_time", '{"zo']


@pytest.mark.parametrize("how", ["whole", "chars"])
@pytest.mark.parametrize("variant", ["qwen2", "llama3", "mistral"])
def test_a_cut_call_never_leaks_markup(tokenizers, variant, how):
    """A call cut anywhere (max_tokens) after some content: the content is the text before
    it, never markup; once the name is written the call is announced, and the arguments sent
    are what was written of them. Llama 3's bare calls are forced here (a bare `{` under
    "auto" may be a JSON answer); its `<|python_tag|>` form is read unforced."""
    tokenizer = tokenizers[variant]
    syntax = detect_syntax(tokenizer.chat_template)
    name, arguments = CALLS[0]
    text = assistant_turn(tokenizer, [CALLS[0]])
    marked = [text, "<|python_tag|>" + text] if variant == "llama3" else [text]
    for call_text in marked:
        forced = not call_text.startswith(syntax.start_markers)
        lead = "" if forced else "Let me see."
        full = (lead + "\n" if lead else "") + call_text
        name_end = call_text.index(json.dumps(name)) + len(json.dumps(name))
        args_start = call_text.index(json.dumps(arguments))
        for length in range(len(full) - len(call_text) + 1, len(full)):
            cut = full[:length]
            content, got, _ = parse(syntax.name, pieces(cut, how), cut=True, forced=forced)
            assert content == lead, (cut, content)
            written = length - (len(full) - len(call_text))
            if written < name_end:
                assert got == [], cut
                continue
            (call,) = got
            assert call[1] == name and call[0].startswith("call_")
            assert json.dumps(arguments).startswith(call[2]), (cut, call)
            assert call[2] == json.dumps(arguments)[:max(0, written - args_start)]
        content, got, _ = parse(syntax.name, pieces(full, how), forced=forced)
        assert content == lead and [(n, json.loads(a)) for _, n, a in got] == [CALLS[0]]


@pytest.mark.parametrize("syntax_name,text,content", [
    ("hermes", "See <tool_ca", "See"),  # a marker cut short: held back, dropped
    ("mistral", "[TOOL_CALLS]", ""),
    ("hermes", "<tool_call>\n{\"na", ""),
    ("llama3_json", '{"answer": 4', '{"answer": 4'),  # unforced: maybe a JSON answer
])
def test_cut_markup_is_dropped(syntax_name, text, content):
    for how in ("whole", "chars"):
        assert parse(syntax_name, pieces(text, how), cut=True)[:2] == (content, [])
    assert parse("llama3_json", ['{"na'], cut=True, forced=True)[:2] == ("", [])


@pytest.mark.parametrize("variant", ["qwen2", "llama3", "mistral"])
def test_call_grammars_accept_the_template_text_and_only_allowed_calls(tokenizers, variant):
    tokenizer = tokenizers[variant]
    syntax = detect_syntax(tokenizer.chat_template)
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
    tools = [{"name": tool["function"]["name"], "parameters": tool["function"]["parameters"]}
             for tool in TOOLS]
    one = [("get_weather", {"city": "Lyon", "unit": "f"})]

    def accepts(grammar: str, text: str) -> bool:
        text = re.sub(r', "id": "call\d"', "", text)  # history ids: the grammar writes none
        assert llguidance.LLMatcher.validate_grammar(
            llguidance.grammar_from("lark", grammar), ll_tokenizer) == ""
        matcher = llguidance.LLMatcher(ll_tokenizer, llguidance.grammar_from("lark", grammar))
        ok = matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False))
        return ok and matcher.is_accepting()

    required = tool_call_grammar(syntax, tools)
    named = tool_call_grammar(syntax, tools, function_name="get_weather")
    single = tool_call_grammar(syntax, tools, parallel=False)
    assert accepts(required, assistant_turn(tokenizer, one))
    assert accepts(named, assistant_turn(tokenizer, one))
    assert not accepts(named, assistant_turn(tokenizer, [("get_time", {"zone": "UTC"})]))
    assert not accepts(required, assistant_turn(tokenizer, [("get_weather", {"city": "x"})]))
    if variant != "llama3":  # the Llama 3.1 template writes one call per turn
        two = [one[0], ("get_time", {"zone": "UTC"})]
        assert accepts(required, assistant_turn(tokenizer, two))
        assert not accepts(single, assistant_turn(tokenizer, two))


@pytest.mark.parametrize("variant", ["qwen2", "llama3", "mistral"])
def test_auto_with_strict_tools_leaves_text_free_and_constrains_opened_calls(tokenizers,
                                                                             variant):
    tokenizer = tokenizers[variant]
    syntax = detect_syntax(tokenizer.chat_template)
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
    tools = [{"name": "get_weather", "parameters": WEATHER, "strict": True},
             {"name": "get_time", "parameters": TIME, "strict": False}]
    grammar = llguidance.grammar_from("lark", auto_tool_grammar(syntax, tools))
    assert llguidance.LLMatcher.validate_grammar(grammar, ll_tokenizer) == ""

    def accepts(text: str) -> bool:
        text = re.sub(r', "id": "call\d"', "", text)
        matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
        ok = matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False))
        return ok and matcher.is_accepting()

    assert accepts("It is sunny in Paris, no tool needed.")
    assert accepts(assistant_turn(tokenizer, [("get_weather", {"city": "Lyon", "unit": "c"})]))
    assert accepts(assistant_turn(tokenizer, [("get_time", {"zone": "UTC", "extra": 1})]))
    assert not accepts(assistant_turn(tokenizer, [("get_weather", {"city": "Lyon"})]))
    assert not accepts(assistant_turn(tokenizer, [("no_such_tool", {})]))


@pytest.mark.parametrize("variant", ["qwen2", "llama3", "mistral"])
def test_auto_with_a_response_format_is_the_answer_or_valid_calls(tokenizers, variant):
    """tool_choice "auto" with a response format: one grammar allows the format's answer or
    calls in the family's syntax (for Llama 3 both start with `{`), nothing else."""
    tokenizer = tokenizers[variant]
    syntax = detect_syntax(tokenizer.chat_template)
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
    tools = [{"name": "get_weather", "parameters": WEATHER, "strict": True},
             {"name": "get_time", "parameters": TIME, "strict": False}]
    answer = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    spec = GrammarSpec("json_schema", json.dumps(answer), "response_format",
                       tool_calls=auto_calls_grammar(syntax, tools))
    grammar = grammar_text(spec, 64 * 1024)
    assert llguidance.LLMatcher.validate_grammar(grammar, ll_tokenizer) == ""

    def accepts(text: str) -> bool:
        text = re.sub(r', "id": "call\d"', "", text)
        matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
        ok = matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False))
        return ok and matcher.is_accepting()

    assert accepts('{"ok":true}')
    assert accepts(assistant_turn(tokenizer, [("get_weather", {"city": "Lyon", "unit": "c"})]))
    assert accepts(assistant_turn(tokenizer, [("get_time", {"zone": "UTC", "extra": 1})]))
    assert not accepts('{"ok":true,"more":1}')
    assert not accepts("It is sunny, no tool needed.")
    assert not accepts(assistant_turn(tokenizer, [("get_weather", {"city": "Lyon"})]))
    assert not accepts(assistant_turn(tokenizer, [("no_such_tool", {})]))
    if variant != "llama3":
        two = [("get_weather", {"city": "Lyon", "unit": "c"}), ("get_time", {"zone": "UTC"})]
        assert accepts(assistant_turn(tokenizer, two))


def test_a_bad_part_of_an_answer_or_calls_grammar_is_named(tokenizers):
    """The composed grammar's error names the part that fails: the calls (`tools`) or the
    response format's answer."""
    tokenizer = tokenizers["qwen2"]
    compiler = GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id])
    calls = auto_calls_grammar(syntax_named("hermes"), [{"name": "f", "parameters": TIME}])
    answer = json.dumps({"type": "object", "properties": {"ok": {"type": "boolean"}}})
    try:
        compiler.check(GrammarSpec("json_schema", answer, "response_format", tool_calls=calls))
        for spec, param in [
                (GrammarSpec("json_schema", answer, "response_format",
                             tool_calls="start: missing"), "tools"),
                (GrammarSpec("json_schema", '{"type": "nonsense"}', "response_format",
                             tool_calls=calls), "response_format")]:
            with pytest.raises(InvalidParameter) as refused:
                compiler.check(spec)
            assert refused.value.param == param
    finally:
        compiler.close()


CUSTOM_TOOLS = [
    {"name": "get_time", "parameters": TIME},
    {"name": "calc", "parameters": {}, "custom": {"syntax": "regex",
                                                  "definition": r"(add|sub) [0-9]{1,3}"}},
    {"name": "op", "parameters": {}, "custom": {"syntax": "lark", "definition":
                                                'start: word+\nword: "a" | "b" " "'}},
    {"name": "note", "parameters": {}, "custom": {"syntax": "", "definition": ""}},
]


def _custom_call(name: str, text: str) -> str:
    return f'<tool_call>\n{{"name": "{name}"}}\n{text}\n</tool_call>'


@pytest.mark.parametrize("how", ["whole", "chars", "uneven"])
def test_custom_calls_parse_to_their_raw_input(how):
    """A custom tool's call is its name, then raw text up to the close marker: parsed in any
    chunking to the exact input (a partial close inside the input is input), next to function
    calls and content."""
    note = "line one\n{\"json\": no} </tool\nend"
    text = ("Sure." + _custom_call("note", note) + "\n" + _custom_call("calc", "add 12")
            + '\n<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}\n</tool_call>')
    parser = ToolCallParser(syntax_named("hermes"), custom_names=frozenset({"note", "calc"}))
    content, calls = "", {}
    for result in [parser.feed(chunk) for chunk in pieces(text, how)] + [parser.finish()]:
        content += result.content
        for delta in result.tool_calls:
            call = calls.setdefault(delta.index, ["", "", ""])
            call[0], call[1], call[2] = call[0] + delta.name, call[1] + delta.type, \
                call[2] + delta.arguments
    assert content == "Sure."
    assert [calls[i] for i in sorted(calls)] == [["note", "custom", note],
                                                 ["calc", "custom", "add 12"],
                                                 ["get_time", "", '{"zone": "UTC"}']]


def test_custom_call_grammars_enforce_each_format(tokenizers):
    """llguidance, on the tiny Qwen tokenizer, takes a custom call whose input matches the
    tool's regex or Lark grammar (free text: anything up to the close) and refuses one that
    does not; function calls still work beside them; a bad format is a 400 naming it."""
    tokenizer = tokenizers["qwen2"]
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer)
    syntax = detect_syntax(tokenizer.chat_template)

    def accepts(grammar: str, text: str) -> bool:
        matcher = llguidance.LLMatcher(ll_tokenizer, grammar_text(
            GrammarSpec(kind="llguidance", source=grammar, param="tools"), 1 << 16))
        ok = matcher.consume_tokens(tokenizer.encode(text, add_special_tokens=False))
        return ok and matcher.is_accepting()

    required = tool_call_grammar(syntax, CUSTOM_TOOLS)
    assert accepts(required, _custom_call("calc", "sub 7") + "\n" + _custom_call("op", "ab a")
                   + "\n" + _custom_call("note", "any {text}\nat all"))
    assert accepts(required, '<tool_call>\n{"name": "get_time", "arguments": {"zone": "UTC"}}'
                             '\n</tool_call>')
    assert not accepts(required, _custom_call("calc", "mul 7"))
    assert not accepts(required, _custom_call("op", "ac"))
    named = tool_call_grammar(syntax, CUSTOM_TOOLS, function_name="calc")
    assert accepts(named, _custom_call("calc", "add 123"))
    assert not accepts(named, _custom_call("note", "add 123"))
    auto = auto_tool_grammar(syntax, CUSTOM_TOOLS)
    assert accepts(auto, "Let me see. " + _custom_call("calc", "add 1"))
    assert not accepts(auto, "Let me see. " + _custom_call("calc", "add x"))
    from core.service.tools.grammar import check_custom_format
    for bad in ({"syntax": "regex", "definition": "(["}, {"syntax": "lark", "definition": "a: ("}):
        with pytest.raises(InvalidParameter) as caught:
            check_custom_format(bad, "tools[1].format")
        assert caught.value.param == "tools[1].format"
