"""core/service/vllm_engine.py without a server: a vLLM-contract GenerateRequest as the Tandem
GenerateRequest that runs it, and Tandem's response chunks as the vLLM contract's replies. (The
RPCs themselves, against real cores and smg: tests/e2e/test_smg.py.)"""

from __future__ import annotations

import pytest
from smg_grpc_proto.generated import vllm_engine_pb2 as vpb

from core.errors import InvalidParameter, Unsupported
from core.service.vllm_engine import ChoiceReplies, tandem_request
from tandem.v1 import inference_pb2 as pb


def test_a_vllm_request_as_tandem_request():
    request = vpb.GenerateRequest(
        request_id="r", tokenized=vpb.TokenizedInput(input_ids=[5, 6, 7, 8]),
        sampling_params=vpb.SamplingParams(
            temperature=0, top_p=0.0, top_k=0, repetition_penalty=0.0, min_p=0.1, max_tokens=7,
            stop_token_ids=[3], seed=-1, n=2, logprobs=2, truncate_prompt_tokens=3,
            regex="[ab]+", logit_bias={9: -5.0}))
    tandem = tandem_request(request)
    assert list(tandem.tokens.ids) == [6, 7, 8]  # vLLM keeps the last k
    assert tandem.sampling.HasField("temperature") and tandem.sampling.temperature == 0
    # proto3 zeros are "unset", as vLLM's own servicer reads them
    assert not tandem.sampling.HasField("top_p") and not tandem.sampling.HasField("top_k")
    assert not tandem.sampling.HasField("repetition_penalty")
    assert tandem.sampling.min_p == pytest.approx(0.1)
    assert tandem.sampling.seed == 2**64 - 1 and dict(tandem.sampling.logit_bias) == {9: -5.0}
    assert (tandem.stopping.max_tokens, list(tandem.stopping.stop_token_ids)) == (7, [3])
    assert (tandem.n, tandem.logprobs, tandem.top_logprobs) == (2, True, 2)
    assert tandem.structured_outputs.regex == "[ab]+"
    assert not tandem.detokenize  # token ids out: no stop strings to find in the text
    with_stop = tandem_request(vpb.GenerateRequest(
        text="hi", sampling_params=vpb.SamplingParams(stop=["\n"], skip_special_tokens=True)))
    assert with_stop.detokenize and list(with_stop.stopping.stop) == ["\n"]
    assert with_stop.text == "hi" and with_stop.stopping.skip_special_tokens


@pytest.mark.parametrize(("params", "error", "param"), [
    (vpb.SamplingParams(logprobs=-1), InvalidParameter, "logprobs"),
    (vpb.SamplingParams(structural_tag="{}"), Unsupported, "structural_tag"),
])
def test_what_tandem_cannot_do_names_the_field(params, error, param):
    with pytest.raises(error) as raised:
        tandem_request(vpb.GenerateRequest(tokenized=vpb.TokenizedInput(input_ids=[1]),
                                           sampling_params=params))
    assert raised.value.param == param


def _chunk(index: int, ids: list[int], finish=pb.FINISH_REASON_UNSPECIFIED, **stop):
    return pb.GenerateResponse(choices=[pb.ChoiceDelta(index=index, token_ids=ids,
                                                       finish_reason=finish, **stop)],
                               usage=pb.Usage(cached_tokens=16))


def test_replies_streamed_and_whole():
    chunks = [_chunk(0, [4, 5]), _chunk(1, [9]), _chunk(0, [6], pb.FINISH_REASON_STOP,
                                                      stop_token_id=6),
              _chunk(1, [10], pb.FINISH_REASON_LENGTH)]
    streamed = ChoiceReplies(stream=True, num_prompt_tokens=20)
    kinds = [(r.WhichOneof("response"), getattr(r, r.WhichOneof("response")).index)
             for c in chunks for r in streamed.replies(c)]
    assert kinds == [("chunk", 0), ("chunk", 1), ("chunk", 0), ("complete", 0), ("chunk", 1),
                     ("complete", 1)]
    whole = ChoiceReplies(stream=False, num_prompt_tokens=20)
    completes = [r.complete for c in chunks for r in whole.replies(c)]
    assert [(list(c.output_ids), c.finish_reason, c.completion_tokens) for c in completes] == [
        ([4, 5, 6], "stop", 3), ([9, 10], "length", 2)]
    assert completes[0].matched_token_id == 6 and completes[0].cached_tokens == 16
    assert completes[0].prompt_tokens == 20
