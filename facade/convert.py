"""Translation between OpenAI request/response models and the `tandem.v1` protos: pure
functions, no state.

Requests: a chat request becomes one `GenerateRequest` with `ChatInput` (messages, content parts,
tools as JSON strings); a completions request becomes one `GenerateRequest` per prompt (`text` or
`tokens`); an embeddings request one `EmbedRequest`, a score request one `ScoreRequest`. Optional
proto fields are set only when the client gave a value, so the core can tell 0 from "unset".
Responses: finish reasons, stop reasons and logprobs out of `GenerateResponse` chunks;
embedding vectors as float lists or base64, scores as float lists. Text never gets tokenized
here. What a request's choices and usage add up to while it runs (the run state) is the
pipeline's (facade/pipeline/).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from collections.abc import Iterable, Sequence

from facade.bodies import ChoiceLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob
from facade.errors import ApiError, internal_error, invalid_request
from facade.protocol import (
    AllowedToolsChoice,
    ChatCompletionRequest,
    ChatCustomTool,
    ChatMessage,
    CompletionRequest,
    FunctionDefinition,
    NamedCustomChoice,
    SamplingFields,
)
from facade.protocol_extra import (
    DetokenizeRequest,
    EmbeddingRequest,
    ScoringRequest,
    TokenizeRequest,
)
from tandem.v1 import inference_pb2 as pb

_FINISH_REASONS: dict[int, str] = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
    pb.FINISH_REASON_ABORT: "abort",
}

# OpenAI roles sent to the core under the role chat templates know (the HF templates of
# Llama/Qwen/Mistral have no "developer" and no legacy "function" role).
_TEMPLATE_ROLES: dict[str, str] = {"developer": "system", "function": "tool"}

_RESPONSE_FORMATS: dict[str, int] = {
    "text": pb.ResponseFormat.TYPE_TEXT,
    "json_object": pb.ResponseFormat.TYPE_JSON_OBJECT,
    "json_schema": pb.ResponseFormat.TYPE_JSON_SCHEMA,
}


# ---------------------------------------------------------------------------------------------
# OpenAI request → GenerateRequest


def _sampling(request: SamplingFields) -> pb.SamplingParams:
    """Sampling fields, each set only when the client gave it."""
    sampling = pb.SamplingParams()
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "seed"):  # fmt: skip
        value = getattr(request, name)
        if value is not None:
            setattr(sampling, name, value)
    if request.top_k is not None:
        sampling.top_k = max(request.top_k, 0)  # vLLM's -1 and the proto's 0 both mean "off"
    for token_id, bias in (request.logit_bias or {}).items():
        sampling.logit_bias[int(token_id)] = bias
    if request.allowed_token_ids is not None:
        sampling.allowed_token_ids.ids.extend(request.allowed_token_ids)
    sampling.bad_words.extend(request.bad_words or [])
    return sampling


def _stopping(request: SamplingFields, max_tokens: int | None) -> pb.StoppingCriteria:
    """Stopping fields, each set only when the client gave it."""
    stopping = pb.StoppingCriteria(
        stop=request.stop_strings, stop_token_ids=request.stop_token_ids or []
    )
    if max_tokens is not None:
        stopping.max_tokens = max_tokens
    for name in ("min_tokens", "ignore_eos", "include_stop_str_in_output", "skip_special_tokens"):
        value = getattr(request, name)
        if value is not None:
            setattr(stopping, name, value)
    return stopping


def _response_format(request: SamplingFields) -> pb.ResponseFormat | None:
    if request.response_format is None:
        return None
    response_format = pb.ResponseFormat(type=_RESPONSE_FORMATS[request.response_format.type])
    schema = request.response_format.json_schema
    if schema is not None:
        response_format.json_schema = json.dumps(schema.json_schema or {})
        response_format.name = schema.name or ""
        if schema.strict is not None:
            response_format.strict = schema.strict
    return response_format


_GUIDED_FIELDS = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice",
                  "guided_grammar": "grammar"}  # vLLM's older names → structured_outputs keys


def _structured_outputs(request: SamplingFields) -> pb.StructuredOutputs | None:
    """`structured_outputs` or one `guided_*` field (the core compiles and checks it)."""
    given = [(name, getattr(request, name)) for name in ("structured_outputs", *_GUIDED_FIELDS)
             if getattr(request, name) is not None]
    if len(given) > 1:
        raise invalid_request(f"only one of {', '.join(name for name, _ in given)} may be set",
                              param=given[1][0])
    if not given:
        return None
    param, value = given[0]
    if param != "structured_outputs":
        return _constraint(param, _GUIDED_FIELDS[param], value)
    key = next(key for key in ("json_schema", "regex", "choice", "grammar", "json_object")
               if getattr(value, key) not in (None, False))
    return _constraint(param, "json" if key == "json_schema" else key, getattr(value, key))


def _constraint(param: str, key: str, value) -> pb.StructuredOutputs:
    proto = pb.StructuredOutputs(param=param)
    if key == "json":
        proto.json = value if isinstance(value, str) else json.dumps(value)
    elif key == "choice":
        proto.choice.choices.extend(value)
    else:  # regex, grammar (text) or json_object (true)
        setattr(proto, key, value)
    return proto


def _common(request: SamplingFields, model: str, max_tokens: int | None) -> pb.GenerateRequest:
    """The GenerateRequest fields chat and completions share (everything but the input)."""
    generate = pb.GenerateRequest(
        model=model,
        sampling=_sampling(request),
        stopping=_stopping(request, max_tokens),
        cache_salt=request.cache_salt or "",
    )
    if request.n is not None:
        generate.n = request.n
    if request.priority is not None:
        generate.priority = request.priority
    if request.prompt_logprobs is not None:
        generate.prompt_logprobs = request.prompt_logprobs
    response_format = _response_format(request)
    if response_format is not None:
        generate.response_format.CopyFrom(response_format)
    structured_outputs = _structured_outputs(request)
    if structured_outputs is not None:
        generate.structured_outputs.CopyFrom(structured_outputs)
    return generate


def _message(message: ChatMessage) -> pb.ChatMessage:
    """One OpenAI chat message → proto (a string content becomes one text part)."""
    proto = pb.ChatMessage(role=_TEMPLATE_ROLES.get(message.role, message.role))
    if isinstance(message.content, str):
        proto.content.append(pb.ContentPart(text=message.content))
    for part in message.content if isinstance(message.content, list) else []:
        if part.type == "text":
            proto.content.append(pb.ContentPart(text=part.text or ""))
        elif part.type == "image_url" and part.image_url is not None:
            image = pb.ImageUrl(url=part.image_url.url, detail=part.image_url.detail or "")
            proto.content.append(pb.ContentPart(image_url=image))
        elif part.type == "input_audio" and part.input_audio is not None:
            audio = pb.InputAudio(data=part.input_audio.data, format=part.input_audio.format)
            proto.content.append(pb.ContentPart(input_audio=audio))
    if message.name is not None:
        proto.name = message.name
    if message.tool_call_id is not None:
        proto.tool_call_id = message.tool_call_id
    for call in message.tool_calls or []:
        if call.custom is not None and call.type == "custom":  # the input rides as arguments
            function = pb.FunctionCall(name=call.custom.name, arguments=call.custom.input)
        else:
            function = pb.FunctionCall(name=call.function.name,
                                       arguments=call.function.arguments)
        proto.tool_calls.append(pb.ToolCall(id=call.id, type=call.type, function=function))
    reasoning = message.reasoning_content or message.reasoning
    if reasoning and message.role == "assistant":
        proto.reasoning_content = reasoning
    return proto


_TOOL_CHOICE_MODES = {
    "none": pb.ToolChoice.MODE_NONE,
    "auto": pb.ToolChoice.MODE_AUTO,
    "required": pb.ToolChoice.MODE_REQUIRED,
}


def _tool_definitions(request: ChatCompletionRequest) -> list[pb.Tool]:
    """The tools offered, in order (custom tools too); the deprecated `functions` counts as
    `tools`. An empty list is a 400 (OpenAI's own answer); "none" and the rest of tool_choice
    are the core's business."""
    for param, given in (("tools", request.tools), ("functions", request.functions)):
        if given is not None and not given:
            raise ApiError(400, f"'{param}' must not be empty: leave it out instead.",
                           param=param, code="invalid_value")
    definitions = [tool.custom if isinstance(tool, ChatCustomTool) else tool.function
                   for tool in request.tools or []] + list(request.functions or [])
    return [_tool(definition) for definition in definitions]


def _tool(definition) -> pb.Tool:
    if not isinstance(definition, FunctionDefinition):  # a custom tool
        syntax, source = (definition.format.syntax_and_definition()
                          if definition.format is not None else ("", ""))
        return pb.Tool(type="custom", name=definition.name,
                       description=definition.description or "", format_syntax=syntax,
                       format_definition=source)
    tool = pb.Tool(type="function", name=definition.name,
                   description=definition.description or "",
                   parameters_json=json.dumps(definition.parameters or {}))
    if definition.strict is not None:
        tool.strict = definition.strict
    return tool


def _tool_choice(request: ChatCompletionRequest) -> pb.ToolChoice | None:
    """`tool_choice` (or the deprecated `function_call`) as the proto's ToolChoice."""
    choice = request.tool_choice
    if choice is None:
        choice = request.function_call
    if choice is None:
        return None
    if isinstance(choice, str):
        return pb.ToolChoice(mode=_TOOL_CHOICE_MODES[choice])
    if isinstance(choice, AllowedToolsChoice):
        allowed = choice.allowed_tools
        return pb.ToolChoice(mode=_TOOL_CHOICE_MODES[allowed.mode],
                             allowed_function_names=[tool.name for tool in allowed.tools])
    if isinstance(choice, NamedCustomChoice):
        return pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name=choice.custom.name)
    name = choice.function.name if hasattr(choice, "function") else choice.name
    return pb.ToolChoice(mode=pb.ToolChoice.MODE_FUNCTION, function_name=name)


def _chat_input(request: ChatCompletionRequest) -> pb.ChatInput:
    chat = pb.ChatInput(messages=[_message(message) for message in request.messages])
    chat.tools.extend(_tool_definitions(request))
    tool_choice = _tool_choice(request)
    if tool_choice is not None:
        chat.tool_choice.CopyFrom(tool_choice)
    if request.parallel_tool_calls is not None:
        chat.parallel_tool_calls = request.parallel_tool_calls
    if request.add_generation_prompt is not None:
        chat.add_generation_prompt = request.add_generation_prompt
    if request.continue_final_message is not None:
        chat.continue_final_message = request.continue_final_message
    if request.chat_template_kwargs:
        chat.chat_template_kwargs_json = json.dumps(request.chat_template_kwargs)
    if request.chat_template is not None:
        chat.chat_template = request.chat_template
    if request.thinking_token_budget is not None:
        chat.thinking_token_budget = request.thinking_token_budget
    return chat


def chat_to_generate(request: ChatCompletionRequest, model: str) -> pb.GenerateRequest:
    """A chat completion request → one GenerateRequest with ChatInput."""
    generate = _common(request, model, request.max_output_tokens)
    generate.chat.CopyFrom(_chat_input(request))
    if request.logprobs is not None:
        generate.logprobs = request.logprobs
    if request.logprobs and request.top_logprobs is not None:
        generate.top_logprobs = request.top_logprobs
    return generate


def completion_to_generates(request: CompletionRequest, model: str) -> list[pb.GenerateRequest]:
    """A completions request → one GenerateRequest per prompt, in prompt order."""
    if request.best_of is not None and request.best_of > (request.n or 1) and request.stream:
        raise invalid_request("best_of greater than n cannot be streamed.", param="best_of")
    if request.max_tokens == 0 and not request.echo:
        raise invalid_request("max_tokens 0 needs echo (the prompt is then scored only).",
                              param="max_tokens")
    generates = []
    for prompt in request.prompts:
        generate = _common(request, model, request.max_tokens)
        if isinstance(prompt, str):
            generate.text = prompt
        else:
            generate.tokens.ids.extend(prompt)
        if request.logprobs is not None:
            generate.logprobs = True
            generate.top_logprobs = request.logprobs
        if request.best_of is not None:
            generate.n = request.best_of  # the best n by cumulative logprob are kept
        if request.echo and (request.logprobs is not None or request.max_tokens == 0):
            generate.prompt_logprobs = max(request.logprobs or 0, request.prompt_logprobs or 0)
        if request.add_special_tokens is not None:
            generate.add_special_tokens = request.add_special_tokens
        generates.append(generate)
    return generates


def tokenize_request(request: TokenizeRequest, model: str) -> pb.TokenizeRequest:
    """POST /tokenize → TokenizeRequest: text, or chat input built as the chat route builds it."""
    tokenize = pb.TokenizeRequest(model=model)
    if request.messages is not None:
        chat_fields = request.model_dump(
            include={"messages", "tools", "add_generation_prompt", "continue_final_message",
                     "chat_template", "chat_template_kwargs"},
        )  # fmt: skip
        chat = ChatCompletionRequest.model_validate(chat_fields)
        tokenize.chat.CopyFrom(_chat_input(chat))
    else:
        tokenize.text = request.prompt or ""
    if request.add_special_tokens is not None:
        tokenize.add_special_tokens = request.add_special_tokens
    return tokenize


def chat_tokenize_request(request: ChatCompletionRequest, model: str) -> pb.TokenizeRequest:
    """The prompt a chat request would render (tools included) as a TokenizeRequest (the
    Messages API's count_tokens)."""
    return pb.TokenizeRequest(model=model, chat=_chat_input(request))


def detokenize_request(request: DetokenizeRequest, model: str) -> pb.DetokenizeRequest:
    return pb.DetokenizeRequest(model=model, token_ids=request.tokens)


def score_input(value: str | list[int]) -> pb.ScoreInput:
    """One text or token-id list as the proto's `ScoreInput`."""
    if isinstance(value, str):
        return pb.ScoreInput(text=value)
    return pb.ScoreInput(tokens=pb.TokenIds(ids=value))


def embeddings_to_embed(request: EmbeddingRequest, model: str) -> pb.EmbedRequest:
    """An embeddings request → one EmbedRequest (every input, in order)."""
    embed = pb.EmbedRequest(model=model, inputs=[score_input(value) for value in request.inputs])
    if request.dimensions is not None:
        embed.dimensions = request.dimensions
    return embed


def scoring_to_score(request: ScoringRequest, model: str) -> pb.ScoreRequest:
    """A score request → one ScoreRequest (every item, in order)."""
    return pb.ScoreRequest(
        model=model,
        query=score_input(request.query),
        items=[score_input(item) for item in request.items],
        label_token_ids=request.label_token_ids,
        apply_softmax=bool(request.apply_softmax),
        item_first=bool(request.item_first),
    )


# ---------------------------------------------------------------------------------------------
# Core responses → OpenAI pieces


def finite_floats(values: Iterable[float], what: str) -> list[float]:
    """The core's numbers as a list; a NaN or infinity (not JSON) is a core bug → 500."""
    numbers = list(values)
    if not all(math.isfinite(number) for number in numbers):
        raise internal_error(f"The core returned a non-finite {what}.")
    return numbers


def base64_float32(values: Sequence[float]) -> str:
    """A vector as OpenAI's `encoding_format: "base64"`: little-endian float32 bytes, base64."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode("ascii")


def finish_reason(choice: pb.ChoiceDelta) -> str | None:
    """The OpenAI finish_reason of a choice delta; None while the choice is still running."""
    return _FINISH_REASONS.get(choice.finish_reason)


def stop_reason(choice: pb.ChoiceDelta) -> str | int | None:
    """vLLM's stop_reason: the stop string or stop token id that ended the choice."""
    which = choice.WhichOneof("stop_reason")
    return getattr(choice, which) if which else None


def token_name(entry: pb.TokenLogprob | pb.TopLogprob) -> str:
    """The token's text from the core; vLLM's `token_id:<id>` form if the core sent none."""
    return entry.token or f"token_id:{entry.token_id}"


def chat_logprobs(entries: Sequence[pb.TokenLogprob]) -> ChoiceLogprobs:
    """Chat-style logprobs of some tokens of one choice."""
    return ChoiceLogprobs(
        content=[
            TokenLogprob(
                token=token_name(entry),
                logprob=entry.logprob,
                bytes=list(entry.token_bytes),
                top_logprobs=[
                    TopLogprob(
                        token=token_name(top), logprob=top.logprob, bytes=list(top.token_bytes)
                    )
                    for top in entry.top_logprobs
                ],
            )
            for entry in entries
        ]
    )


def completion_logprobs(
    entries: Sequence[pb.TokenLogprob], text_offsets: Sequence[int]
) -> CompletionLogprobs:
    """Legacy completions logprobs; `text_offsets` has one character offset per entry."""
    return CompletionLogprobs(
        tokens=[token_name(entry) for entry in entries],
        token_logprobs=[entry.logprob for entry in entries],
        top_logprobs=[
            {token_name(top): top.logprob for top in entry.top_logprobs} for entry in entries
        ],
        text_offset=list(text_offsets),
    )


def prompt_logprobs_json(entries: Sequence[pb.TokenLogprob], num_top: int) -> list | None:
    """vLLM's prompt_logprobs: null for the first token, then token id → {logprob,
    decoded_token} of the prompt token and its top `num_top` alternatives."""
    if not entries:
        return None
    positions: list = [None]
    for entry in entries[1:]:
        ranked = {str(top.token_id): {"logprob": top.logprob, "decoded_token": token_name(top)}
                  for top in entry.top_logprobs[:num_top]}
        ranked[str(entry.token_id)] = {"logprob": entry.logprob,
                                       "decoded_token": token_name(entry)}
        positions.append(ranked)
    return positions


def echo_logprobs(entries: Sequence[pb.TokenLogprob], num_top: int) -> CompletionLogprobs:
    """The legacy logprobs of an echoed prompt: the first token's are null; offsets count the
    tokens' characters from 0."""
    offsets, offset = [], 0
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.token)
    logprobs = completion_logprobs(entries, offsets)
    if entries:
        logprobs.token_logprobs[0] = None
        logprobs.top_logprobs[0] = None
    logprobs.top_logprobs = [top if top is None else dict(list(top.items())[:num_top])
                             for top in logprobs.top_logprobs]
    return logprobs


def check_rerank_results(reply: pb.RerankResponse, num_documents: int, top_n: int | None
                         ) -> None:
    """A Rerank reply must hold min(documents, top_n) distinct in-range results with finite
    scores; anything else is a core bug → 500."""
    expected = min(num_documents, top_n) if top_n else num_documents
    indexes = [result.index for result in reply.results]
    if len(indexes) != expected or len(set(indexes)) != expected or any(
            index >= num_documents for index in indexes):
        raise internal_error(f"The core returned {len(indexes)} rerank results for "
                             f"{num_documents} documents (top_n {top_n}).")
    finite_floats((result.relevance_score for result in reply.results), "relevance score")
