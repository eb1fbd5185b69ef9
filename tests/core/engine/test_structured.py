"""Grammar-constrained decoding in the real engine (tiny random-weight models): finish reasons,
n > 1, seeded batch invariance, preemption, raw logprobs, cancellation freeing the matcher,
admission errors, no compilation after warm-up, the grammar together with issue 12's stages
(min_tokens, logit_bias, penalties, prompt logprobs of shared-prompt choices), and JSON schemas
on a model of each family through the core's own request conversion (chat template included)."""

from __future__ import annotations

import json
import queue
import re
import time
from dataclasses import replace

import jsonschema
import pytest

from core.engine.request import FinishReason, Request, RequestOutput, SamplingParams, StoppingParams
from core.errors import InvalidParameter
from core.models.tiny import VARIANTS
from core.service import convert
from core.structured import GrammarSpec
from tandem.v1 import inference_pb2 as pb
from tests.conftest import family_engine_config
from tests.core.engine.test_engine import run, small_pool_engine, tokens  # noqa: F401

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 6}, "ok": {"type": "boolean"},
                   "color": {"enum": ["red", "green", "blue"]}},
    "required": ["name", "ok", "color"],
    "additionalProperties": False,
}
JSON_SPEC = GrammarSpec("json_schema", json.dumps(SCHEMA), "response_format")
NEVER_DONE = GrammarSpec("json_schema", '{"type": "string", "minLength": 400}', "guided_json")


@pytest.fixture(scope="module")
def engine(small_pool_engine):
    """test_engine's small pool (20 pages, sequences of up to 256 tokens): preemption."""
    return small_pool_engine


def constrained(request_id: str, prompt: list[int], spec: GrammarSpec = JSON_SPEC,
                max_tokens: int = 100, seed: int = 1, temperature: float = 1.0,
                choice_index: int = 0, top_logprobs: int = 0) -> Request:
    return Request(request_id, list(prompt),
                   SamplingParams(temperature=temperature, seed=seed, choice_index=choice_index),
                   StoppingParams(max_tokens=max_tokens, stop_strings=('"', "}")),
                   want_logprobs=top_logprobs > 0, top_logprobs=top_logprobs, grammar=spec)


def text(outputs: list[RequestOutput]) -> str:
    return "".join(output.text_delta for output in outputs)


def test_complete_grammar_stops_and_truncation_is_length(engine):
    outputs = run(engine, [constrained("done", [5, 6, 7]),
                           constrained("cut", [5, 6, 7], max_tokens=3)])
    assert outputs["done"][-1].finish_reason is FinishReason.STOP
    jsonschema.validate(json.loads(text(outputs["done"])), SCHEMA)  # stop strings cut nothing
    assert outputs["cut"][-1].finish_reason is FinishReason.LENGTH
    assert text(outputs["cut"]).startswith("{") and len(tokens(outputs["cut"])) == 3


def test_preempted_and_batched_seeded_requests_match_each_alone(engine):
    """Eight seeded constrained requests that overflow the pool (preemption recomputes their
    KV; their matchers keep the tokens they consumed) give the tokens each gives alone."""
    prompts = [[10 + i] * 40 for i in range(8)]
    alone = {}
    for i, prompt in enumerate(prompts):
        alone.update(run(engine, [constrained(f"alone-{i}", prompt, seed=100 + i)]))
    preemptions_before = engine.scheduler.num_preemptions
    together = run(engine, [constrained(f"together-{i}", prompt, seed=100 + i)
                            for i, prompt in enumerate(prompts)], timeout_s=600)
    assert engine.scheduler.num_preemptions > preemptions_before
    for i in range(8):
        assert tokens(together[f"together-{i}"]) == tokens(alone[f"alone-{i}"])
        jsonschema.validate(json.loads(text(together[f"together-{i}"])), SCHEMA)


def test_a_prefix_cache_hit_gives_the_same_constrained_output(engine):
    prompt = list(range(50, 90))
    first = run(engine, [constrained("cold", prompt, seed=5)])["cold"]
    second = run(engine, [constrained("warm", prompt, seed=5)])["warm"]
    assert second[-1].cached_tokens >= 32 and tokens(second) == tokens(first)


def test_n_choices_each_get_their_own_matcher(engine):
    outputs = run(engine, [constrained(f"choice-{i}", [5, 6], seed=9, choice_index=i)
                           for i in range(3)])
    texts = [text(outputs[f"choice-{i}"]) for i in range(3)]
    for value in texts:
        jsonschema.validate(json.loads(value), SCHEMA)
    assert len(set(texts)) > 1  # sibling choices draw differently


def test_logprobs_report_the_raw_distribution(engine):
    outputs = run(engine, [constrained("lp", [5, 6], temperature=0.0, top_logprobs=5)])
    first = outputs["lp"][0].logprobs[0]
    assert outputs["lp"][0].text_delta == "{"  # the only token the schema allows first
    assert first.logprob < 0  # under the mask it would be certain (0.0): these are raw
    assert len(first.top) == 5


def test_cancel_frees_the_matcher(engine):
    outputs: queue.Queue[RequestOutput] = queue.Queue()
    engine.add_request(constrained("cancel-me", [5, 6], spec=NEVER_DONE, max_tokens=200),
                       outputs.put)
    outputs.get(timeout=120)  # it is running
    assert "cancel-me" in engine.grammars
    engine.abort("cancel-me")
    deadline = time.monotonic() + 30
    while ("cancel-me" in engine.grammars or engine.num_unfinished) \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(engine.grammars) == 0 and engine.num_unfinished == 0


@pytest.mark.parametrize("spec", [
    GrammarSpec("regex", "a(b", "guided_regex"),
    GrammarSpec("json_schema", '{"type": "nonsense"}', "response_format"),
    GrammarSpec("json_schema", '{"type": "array", "uniqueItems": true}', "response_format"),
    GrammarSpec("lark", "start: missing", "tool_choice"),
    GrammarSpec("grammar", "root ::= (", "guided_grammar"),
    GrammarSpec("choice", "[]", "guided_choice"),
    GrammarSpec("regex", "x" * (64 * 1024 + 1), "guided_regex"),  # over the byte cap
    GrammarSpec("regex", "((a{100}){100}){100}", "guided_regex"),  # hostile: lexer blow-up
])
def test_bad_grammars_are_refused_at_admission_naming_the_param(engine, spec):
    with pytest.raises(InvalidParameter) as error:
        engine.check_grammar(spec)
    assert error.value.param == spec.param
    with pytest.raises(InvalidParameter):  # a caller that skipped the check is refused too
        engine.add_request(constrained("bad", [5], spec=spec), lambda output: None)


def test_non_strict_schema_ignores_what_llguidance_cannot_enforce(engine):
    spec = GrammarSpec("json_schema", json.dumps({**SCHEMA, "uniqueItems": True}),
                       "response_format", strict=False)
    engine.check_grammar(spec)
    outputs = run(engine, [constrained("lenient", [5], spec=spec)])
    jsonschema.validate(json.loads(text(outputs["lenient"])), SCHEMA)


def test_mixed_constrained_and_free_work_compiles_nothing(engine):
    free = Request("free", [5] * 30, SamplingParams(temperature=0.8, seed=3),
                   StoppingParams(max_tokens=20, ignore_eos=True))
    run(engine, [free, constrained("c1", [6] * 3), constrained("c2", [7] * 50, temperature=0)])
    assert engine.compilations_after_warmup == 0


EXTRACTION = {  # fixed keys, enums, booleans and short strings: mostly forced tokens
    "type": "object",
    "properties": {"kind": {"enum": ["invoice", "receipt"]}, "paid": {"type": "boolean"},
                   "currency": {"enum": ["EUR", "USD"]}, "vendor": {"type": "string",
                                                                   "maxLength": 5},
                   "urgent": {"type": "boolean"}, "status": {"enum": ["open", "closed"]}},
    "required": ["kind", "paid", "currency", "vendor", "urgent", "status"],
    "additionalProperties": False,
}


def test_jump_forward_gives_the_greedy_text_in_fewer_steps(engine, monkeypatch):
    """Forced tokens (keys, punctuation, enum tails) are appended without sampling and
    computed as one chunk: the greedy text is the one decoded token by token, it validates,
    several tokens arrive per output, and nothing compiles."""
    spec = GrammarSpec("json_schema", json.dumps(EXTRACTION), "response_format")
    prompts = [[5, 6, 7], list(range(30, 70))]

    def greedy(tag: str) -> dict[str, list[RequestOutput]]:
        return run(engine, [constrained(f"{tag}-{i}", prompt, spec=spec, temperature=0.0)
                            for i, prompt in enumerate(prompts)])

    forced_before = engine.num_forced_tokens
    jumped = greedy("jump")
    assert engine.num_forced_tokens - forced_before > 20
    monkeypatch.setattr(engine, "jump_forward", False)
    forced_before = engine.num_forced_tokens
    stepped = greedy("step")
    assert engine.num_forced_tokens == forced_before  # off: every token sampled
    for i in range(len(prompts)):
        jump, step = jumped[f"jump-{i}"], stepped[f"step-{i}"]
        assert text(jump) == text(step)
        jsonschema.validate(json.loads(text(jump)), EXTRACTION)
        assert jump[-1].finish_reason is step[-1].finish_reason is FinishReason.STOP
        assert jump[-1].completion_tokens == len(tokens(jump))
        assert len(jump) < len(step) == len(tokens(step))  # several tokens per output
    assert engine.compilations_after_warmup == 0


def test_min_tokens_holds_eos_back_under_a_grammar_until_it_can_only_end(engine):
    eos = engine.model_config.eos_token_ids[0]
    pushes_eos = SamplingParams(temperature=0.0, logit_bias=((eos, 100.0),))
    letters = GrammarSpec("regex", "[a-z ]*", "structured_outputs")
    only_x = GrammarSpec("choice", json.dumps(["x"]), "structured_outputs")

    def request(request_id: str, spec: GrammarSpec, min_tokens: int) -> Request:
        return Request(request_id, [5, 6, 7], pushes_eos,
                       StoppingParams(max_tokens=40, min_tokens=min_tokens), grammar=spec)

    outputs = run(engine, [request("eager", letters, 0), request("held", letters, 6),
                           request("ends", only_x, 10)])
    assert tokens(outputs["eager"]) == [eos]  # the bias wins where the grammar allows EOS
    held = tokens(outputs["held"])
    assert len(held) == 7 and held[-1] == eos and eos not in held[:-1]
    assert re.fullmatch("[a-z ]*", text(outputs["held"]))
    # the grammar can only end after "x": it ends before min_tokens, never an all-masked row
    assert text(outputs["ends"]) == "x"
    assert outputs["ends"][-1].finish_reason is FinishReason.STOP


def test_grammar_choices_share_a_prompt_with_prompt_logprobs_and_penalties(engine):
    prompt = list(range(5, 45))
    sampling = SamplingParams(temperature=1.0, seed=4, presence_penalty=1.0,
                              frequency_penalty=0.5, repetition_penalty=1.2)
    requests = [Request(f"g-{i}", prompt, replace(sampling, choice_index=i),
                        StoppingParams(max_tokens=100), grammar=JSON_SPEC, group_id="g",
                        cache_salt="g", prompt_logprobs=2 if i == 0 else None)
                for i in range(3)]
    outputs = run(engine, requests)
    for i in range(3):
        jsonschema.validate(json.loads(text(outputs[f"g-{i}"])), SCHEMA)
        assert outputs[f"g-{i}"][-1].finish_reason is FinishReason.STOP
    entries = outputs["g-0"][0].prompt_logprobs
    assert [entry.token_id for entry in entries] == prompt
    assert all(len(entry.top) == 2 and entry.logprob < 0 for entry in entries[1:])
    assert not outputs["g-1"][0].prompt_logprobs
    assert engine.compilations_after_warmup == 0


# -- a model of each family, through the core's request conversion --------------------------


@pytest.fixture(scope="module", params=VARIANTS)
def family(request, tiny_models):
    """conftest's `family_engine_config`: the Llama loads the buckets the `server` fixture's
    core stored; the others compile the buckets that test_tools_grpc's cores then reuse."""
    from core.engine.loop import create_engine

    engine = create_engine(tiny_models[request.param], family_engine_config(request.param))
    yield request.param, engine
    engine.stop()


@pytest.mark.parametrize("sampling", [pb.SamplingParams(temperature=0),
                                      pb.SamplingParams(temperature=1, seed=77)],
                         ids=["greedy", "seeded"])
def test_json_schema_chat_on_each_family(family, sampling):
    _, engine = family
    generate = pb.GenerateRequest(
        chat=pb.ChatInput(messages=[pb.ChatMessage(
            role="user", content=[pb.ContentPart(text="Describe a thing.")])]),
        sampling=sampling, stopping=pb.StoppingCriteria(max_tokens=100),
        response_format=pb.ResponseFormat(type=pb.ResponseFormat.TYPE_JSON_SCHEMA,
                                          json_schema=json.dumps(SCHEMA), strict=True))
    policy = convert.PromptPolicy(vocab_size=engine.model_config.vocab_size,
                                  max_model_len=engine.engine_config.max_model_len,
                                  max_token_chars=engine.tokenizer.max_token_chars)
    prompt_ids = convert.prompt_token_ids(engine.tokenizer, policy, generate)
    requests = convert.generation_requests(generate, prompt_ids, "family", policy)
    engine.check_grammar(requests[0].grammar)
    outputs = run(engine, requests)["family-0"]
    assert outputs[-1].finish_reason is FinishReason.STOP
    jsonschema.validate(json.loads(text(outputs)), SCHEMA)
