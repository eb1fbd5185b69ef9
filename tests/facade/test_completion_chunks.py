"""The completions stream's chunk rule (facade/pipeline/completions.py): a chunk for every core
response that carries tokens, text or not (as vLLM's stream: a client sees each token arrive),
none for a response with neither tokens, text, logprobs nor a finish reason."""

from __future__ import annotations

from facade.pipeline.completions import CompletionRun
from facade.protocol import CompletionRequest
from tandem.v1 import inference_pb2 as pb


def run_of(**fields) -> CompletionRun:
    request = CompletionRequest(model="m", prompt="p", stream=True, **fields)
    return CompletionRun(request=request, completion_id="cmpl-1", created=0, model="m",
                         num_prompts=1)


def test_a_response_with_tokens_but_no_text_yet_is_a_chunk():
    run = run_of()
    shown = run.add(0, pb.GenerateResponse(choices=[pb.ChoiceDelta(index=0, token_ids=[7])]))
    assert [(choice.index, choice.text, choice.finish_reason) for choice in shown] == [
        (0, "", None)]
    shown = run.add(0, pb.GenerateResponse(choices=[pb.ChoiceDelta(
        index=0, token_ids=[8], text="é")]))
    assert [choice.text for choice in shown] == ["é"]
    assert run.state(0).text == "é"


def test_a_response_with_nothing_to_show_is_no_chunk():
    run = run_of()
    assert run.add(0, pb.GenerateResponse(choices=[pb.ChoiceDelta(index=0)])) == []
    assert run.add(0, pb.GenerateResponse()) == []


def test_choices_of_later_prompts_are_numbered_after_the_first_prompts():
    run = run_of(n=2)
    shown = run.add(1, pb.GenerateResponse(choices=[pb.ChoiceDelta(index=1, token_ids=[3])]))
    assert [choice.index for choice in shown] == [3]  # prompt 1 × n 2 + choice 1
