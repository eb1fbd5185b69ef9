"""Generate's streaming side: a request's tool and reasoning plans, and engine outputs as
response chunks.

Owns: applying the tool plan of a chat request that offers tools (the call grammar for each
choice, one tool-call parser per choice) and the reasoning plan of a chat request on a
reasoning model (one reasoning parser per choice, whose answer text goes on to the tool-call
parser), and `ChoiceStream`, which admits one Generate call's engine requests (one per choice)
and merges their `RequestOutput`s into `GenerateResponse` chunks: every choice's delta since
the last chunk (token ids, reasoning, text or parsed tool calls, logprobs, finish reason) and
the cumulative usage; the first and last chunks also carry a snapshot of the engine's load.
The Abort RPC ends a call early through `abort_asked`: its choices finish with ABORT.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace

from core.engine.loop import Engine
from core.engine.request import FinishReason, Request, RequestOutput
from core.errors import InvalidParameter, TandemError
from core.service.load import load_snapshot
from core.service.reasoning import BlockState, ReasoningParser, reasoning_plan, select_syntax
from core.service.served_models import ServedModel
from core.service.tools import ToolCallParser
from core.service.tools.plan import custom_format, tool_plan
from core.tokenizer import Tokenizer, parse_json_object
from tandem.v1 import inference_pb2 as pb

FINISH_REASONS = {FinishReason.STOP: pb.FINISH_REASON_STOP,  # (STOP after calls: TOOL_CALLS)
                  FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
                  FinishReason.ABORT: pb.FINISH_REASON_ABORT}


def apply_tool_plan(request: pb.GenerateRequest, model: ServedModel,
                     requests: list[Request]) -> list[ToolCallParser] | None:
    """Give the choices of a chat request that offers tools their call grammar ("required" or a
    named function, or "auto" with strict tools) and return one tool-call parser per choice
    (None: no parsing). Under "auto", a choice constrained by a response format may answer in
    that format or call tools: its grammar gets the calls as the alternative."""
    if request.WhichOneof("input") != "chat":
        return None
    chat, tokenizer = request.chat, model.tokenizer
    tools = [{"name": tool.name, "parameters": parse_json_object(tool.parameters_json, "tools"),
              "strict": tool.strict, "custom": custom_format(tool)} for tool in chat.tools]
    plan = tool_plan(chat, tools, chat.chat_template or tokenizer.chat_template,
                     tokenizer.renders_tools(chat.chat_template or None),
                     model.policy.tool_call_parser, tokenizer.added_ids_by_text,
                     model.policy.json_open_objects)
    if plan is None:
        return None
    if request.HasField("detokenize") and not request.detokenize:
        raise InvalidParameter("tool calls are parsed from the text: tools (other than with "
                               "tool_choice 'none') need detokenize true", param="tools")
    forced = chat.tool_choice.mode in (pb.ToolChoice.MODE_REQUIRED, pb.ToolChoice.MODE_FUNCTION)
    for choice in requests:
        if choice.grammar is not None and not forced:  # "auto": the format's answer, or calls
            choice.grammar = replace(choice.grammar, tool_calls=plan.calls)
        elif plan.grammar is not None:
            choice.grammar = plan.grammar  # forced calls take the place of a response format
        if plan.keep_special_tokens:
            choice.stopping = replace(choice.stopping, skip_special_tokens=False)
    customs = frozenset(tool["name"] for tool in tools if tool["custom"] is not None)
    return [ToolCallParser(plan.syntax, forced=forced, custom_names=customs) for _ in requests]


def apply_reasoning_plan(request: pb.GenerateRequest, model: ServedModel, prompt_ids: list[int],
                         requests: list[Request]) -> list[ReasoningParser] | None:
    """Chat on a reasoning model: one reasoning parser per choice, and the think-block prefix
    on the choices' grammars (after the tool plan: a forced call comes after the block too).
    None: the output has no reasoning to parse."""
    if request.WhichOneof("input") != "chat":
        return None
    chat = request.chat
    syntax = select_syntax(model.policy.reasoning_parser,
                           chat.chat_template or model.tokenizer.chat_template)
    budget = chat.thinking_token_budget if chat.HasField("thinking_token_budget") else None
    plan = reasoning_plan(syntax, model.tokenizer, prompt_ids, requests, budget)
    if plan is None or (request.HasField("detokenize") and not request.detokenize):
        return None  # token-out: the grammar still follows the block; the caller splits it
    return [ReasoningParser(plan.syntax, plan.state) for _ in requests]


class ChoiceStream:
    """The engine requests of one Generate call (one per choice), merged into response chunks
    that carry every choice's delta since the last chunk and the cumulative usage."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, requests: list[Request],
                 loop: asyncio.AbstractEventLoop, parsers: list[ToolCallParser] | None = None,
                 reasoners: list[ReasoningParser] | None = None):
        self._engine = engine
        self._tokenizer = tokenizer  # the served model's: token pieces of logprobs
        self._parsers = parsers  # one tool-call parser per choice, or None
        self._reasoners = reasoners  # one reasoning parser per choice, or None
        self._reasoning_tokens = [0] * len(requests)
        self._requests = requests
        self._loop = loop
        self._outputs: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._choice_of = {r.request_id: index for index, r in enumerate(requests)}
        self._completion_tokens = dict.fromkeys(self._choice_of, 0)
        self._cached_tokens = 0  # prompt tokens served from the prefix cache (best choice)
        # request id → (draft tokens proposed, accepted) so far: n-gram speculation
        self._drafts: dict[str, tuple[int, int]] = {}
        self._unfinished: set[str] = set()
        self._abort_asked = False  # the Abort RPC named this call
        self._done = False  # every choice has finished

    def _sink(self, output: RequestOutput) -> None:  # called on the engine thread
        self._loop.call_soon_threadsafe(self._outputs.put_nowait, output)

    async def responses(self) -> AsyncIterator[pb.GenerateResponse]:
        for request in self._requests:  # raises Overloaded / Unavailable: admission
            self._engine.add_request(request, self._sink)
            self._unfinished.add(request.request_id)
        if self._abort_asked:  # asked between the call's start and its admission
            self.abort_asked()
        num_prompt_tokens = len(self._requests[0].prompt_token_ids)
        first = True
        while self._unfinished:
            batch = [await self._outputs.get()]
            while not self._outputs.empty():
                batch.append(self._outputs.get_nowait())
            deltas: dict[int, pb.ChoiceDelta] = {}
            for output in batch:
                if output.error:  # the request's own constraint, or an engine failure
                    raise (InvalidParameter(output.error, param=output.error_param)
                           if output.error_param else TandemError(output.error))
                index = self._choice_of[output.request_id]
                delta = deltas.setdefault(index, pb.ChoiceDelta(index=index))
                self._reasoning_tokens[index] += _merge_output(
                    delta, output, self._tokenizer,
                    self._parsers[index] if self._parsers else None,
                    self._reasoners[index] if self._reasoners else None)
                self._completion_tokens[output.request_id] = output.completion_tokens
                self._cached_tokens = max(self._cached_tokens, output.cached_tokens)
                self._drafts[output.request_id] = (output.num_draft_tokens,
                                                   output.num_accepted_draft_tokens)
                if output.finish_reason is not None:
                    self._unfinished.discard(output.request_id)
            response = pb.GenerateResponse(
                choices=[deltas[i] for i in sorted(deltas)],
                usage=pb.Usage(prompt_tokens=num_prompt_tokens,
                               completion_tokens=sum(self._completion_tokens.values()),
                               cached_tokens=self._cached_tokens,
                               reasoning_tokens=sum(self._reasoning_tokens),
                               draft_tokens=sum(d for d, _ in self._drafts.values()),
                               accepted_draft_tokens=sum(a for _, a in self._drafts.values())))
            if first or not self._unfinished:  # the call's first and last chunks
                response.load.CopyFrom(load_snapshot(self._engine))
            first = False
            if not self._unfinished:
                self._done = True
            yield response

    def abort_asked(self) -> bool:
        """The Abort RPC: stop every unfinished choice; each ends its stream with finish reason
        ABORT (the engine sends it within one step), so the call ends normally. False when
        every choice had finished already."""
        self._abort_asked = True
        for request_id in self._unfinished:
            self._engine.abort(request_id, notify=True)
        return not self._done

    def abort_unfinished(self) -> bool:
        """Abort what has not finished; True when there was something to abort."""
        for request_id in self._unfinished:
            self._engine.abort(request_id)
        aborted, self._unfinished = bool(self._unfinished), set()
        return aborted


def _merge_output(delta: pb.ChoiceDelta, output: RequestOutput, tokenizer: Tokenizer,
                  parser: ToolCallParser | None = None,
                  reasoner: ReasoningParser | None = None) -> int:
    """Add one engine output to the choice's delta; returns its reasoning tokens."""
    delta.token_ids.extend(output.new_token_ids)
    text, num_reasoning = output.text_delta, 0
    if reasoner is not None:
        text, num_reasoning = _split_reasoning(delta, reasoner, output)
    if parser is None:
        delta.text += text
    else:
        _merge_parsed(delta, parser, text, output.finish_reason is not None,
                      cut=output.finish_reason not in (None, FinishReason.STOP))
    _add_logprobs(delta.logprobs, output.logprobs, tokenizer)
    _add_logprobs(delta.prompt_logprobs, output.prompt_logprobs, tokenizer)
    delta.cumulative_logprob = output.cumulative_logprob
    if output.finish_reason is not None:
        delta.finish_reason = FINISH_REASONS[output.finish_reason]
        if output.finish_reason == FinishReason.STOP and parser is not None and parser.made_calls:
            delta.finish_reason = pb.FINISH_REASON_TOOL_CALLS
        if output.stop_string is not None:
            delta.stop_string = output.stop_string
        elif output.stop_token_id is not None:
            delta.stop_token_id = output.stop_token_id
    return num_reasoning


def _split_reasoning(delta: pb.ChoiceDelta, reasoner: ReasoningParser,
                     output: RequestOutput) -> tuple[str, int]:
    """The output's text through the choice's reasoning parser: the reasoning into
    `reasoning_text`; returns the answer text and the output's reasoning tokens (those
    written while the block was open, its markers included)."""
    before = reasoner.state
    parts = [reasoner.feed(output.text_delta)]
    if output.finish_reason is not None:
        parts.append(reasoner.finish())
    delta.reasoning_text += "".join(part.reasoning for part in parts)
    reasoning = before is BlockState.INSIDE or (
        before is BlockState.MAY_OPEN and reasoner.opened)
    return "".join(part.answer for part in parts), len(output.new_token_ids) if reasoning else 0


def _add_logprobs(entries, logprobs, tokenizer: Tokenizer) -> None:
    for logprob in logprobs:
        text, data = tokenizer.token_piece(logprob.token_id)
        entry = entries.add(token_id=logprob.token_id, logprob=logprob.logprob, token=text,
                            token_bytes=data)
        for token_id, value in logprob.top:
            top_text, top_data = tokenizer.token_piece(token_id)
            entry.top_logprobs.add(token_id=token_id, logprob=value, token=top_text,
                                   token_bytes=top_data)


def _merge_parsed(delta: pb.ChoiceDelta, parser: ToolCallParser, text: str,
                  finished: bool, cut: bool = False) -> None:
    """A choice's (answer) text through its tool-call parser: content into `text`, calls into
    `tool_calls` (what was held back comes out when the choice finishes; `cut`: it did not
    stop by itself, so an unfinished marker is markup)."""
    parsed = [parser.feed(text)]
    if finished:
        parsed.append(parser.finish(cut=cut))
    for part in parsed:
        delta.text += part.content
        for call in part.tool_calls:
            delta.tool_calls.add(index=call.index, id=call.id,
                                 type=(call.type or "function") if call.id else "",
                                 function=pb.FunctionCall(name=call.name,
                                                          arguments=call.arguments))
