"""Score and Embed benchmark: Tandem over gRPC against its baselines in the same run.

Owns two measurements, printed as ratios against the issue's targets:

  score  32 items (8 random tokens each) against one 512-token query (a fresh random query every
         repeat, so the prefix cache starts cold): the wall time of one `Score` RPC, against
         Hugging Face transformers (torch CPU, float32) scoring the same 32 prompts one by one
         (one forward per prompt, the labels' log-softmax read at the last position).
         Target: Tandem ≥ 8× faster.
  embed  64 sentences of 10–40 words: the wall time of one `Embed` RPC to the bundled
         all-MiniLM-L6-v2 (inputs/s), against sentence-transformers (PyTorch)
         `encode(sentences, batch_size=64)` on the same files. Target: ≥ 1.5× the throughput.

Order: Tandem first (the core is stopped before the baselines run), so the two never compete
for the CPU. Medians over --repeats. Build the decoder checkpoint with
`python scripts/make_tiny_model.py /tmp/bench-model --size bench`.

Usage:
    python scripts/bench_score_embed.py --model /tmp/bench-model [--repeats 5]
        [--json docs/bench/score_embed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling scripts, run from anywhere

from bench_baseline import tandem_core  # noqa: E402

QUERY_TOKENS, NUM_ITEMS, ITEM_TOKENS = 512, 32, 8
LABELS = [11, 22, 33, 44, 55]
NUM_SENTENCES = 64
WORDS = ("the a model serves many requests at once while cache pages hold keys and values for "
         "every token in flight scheduler budget prefix radix tree shares computed blocks between "
         "turns of one chat embeddings map sentences to vectors whose cosine similarity measures "
         "meaning quick brown fox jumps over lazy dog river mountain city night people lived "
         "there learned words then sentences numbers symbols quotes code json français café "
         "日本語 テキスト").split()
TARGETS = {"score_speedup_vs_hf": 8.0, "embed_throughput_vs_st": 1.5}


def score_prompts(seed: int, vocab_limit: int = 2000) -> tuple[list[int], list[list[int]]]:
    rng = np.random.RandomState(seed)
    query = rng.randint(10, vocab_limit, size=QUERY_TOKENS).tolist()
    items = [rng.randint(10, vocab_limit, size=ITEM_TOKENS).tolist() for _ in range(NUM_ITEMS)]
    return query, items


def sentences(seed: int = 0) -> list[str]:
    rng = np.random.RandomState(seed)
    return [" ".join(rng.choice(WORDS, size=rng.randint(10, 41))).capitalize() + "."
            for _ in range(NUM_SENTENCES)]


def tandem(args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    import grpc

    from tandem.v1 import inference_pb2 as pb
    from tandem.v1 import inference_pb2_grpc as pb_grpc

    def score_request(seed: int) -> pb.ScoreRequest:
        query, items = score_prompts(seed)
        return pb.ScoreRequest(query=pb.ScoreInput(tokens=pb.TokenIds(ids=query)),
                               items=[pb.ScoreInput(tokens=pb.TokenIds(ids=i)) for i in items],
                               label_token_ids=LABELS, apply_softmax=True)

    embed_request = pb.EmbedRequest(model=args.embedding_model_name,
                                    inputs=[pb.ScoreInput(text=s) for s in sentences()])
    result: dict = {}
    with tandem_core(args) as target, grpc.insecure_channel(target) as channel:
        stub = pb_grpc.InferenceStub(channel)
        stub.Score(score_request(10_000))  # warm the path (nothing compiles after warm-up)
        walls, cached = [], []
        for repeat in range(args.repeats):
            started = time.perf_counter()
            reply = stub.Score(score_request(repeat))  # a fresh query: a cold prefix cache
            walls.append(time.perf_counter() - started)
            cached.append(reply.usage.cached_tokens)
        result["score"] = {"wall_s": statistics.median(walls), "walls_s": walls,
                           "cached_tokens": cached}
        stub.Embed(embed_request)
        walls = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            reply = stub.Embed(embed_request)
            walls.append(time.perf_counter() - started)
        vectors = np.array([list(e.values) for e in reply.embeddings], np.float32)
        result["embed"] = {"wall_s": statistics.median(walls), "walls_s": walls,
                           "inputs_per_s": NUM_SENTENCES / statistics.median(walls)}
        models = stub.ListModels(pb.ListModelsRequest()).models
        result["compilations_after_warmup"] = sum(m.compilations_after_warmup for m in models)
    return result, vectors


def hf_score(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    walls = []
    for repeat in range(-1, args.hf_repeats):  # -1: warm-up
        query, items = score_prompts(repeat + 20_000)
        started = time.perf_counter()
        with torch.no_grad():
            for item in items:
                logits = model(torch.tensor([query + item])).logits[0, -1]
                torch.log_softmax(logits, dim=-1)[LABELS].numpy()
        if repeat >= 0:
            walls.append(time.perf_counter() - started)
    return {"wall_s": statistics.median(walls), "walls_s": walls}


def st_embed(args: argparse.Namespace) -> tuple[dict, np.ndarray]:
    import torch
    from sentence_transformers import SentenceTransformer

    from core.models.bundled import default_embedding_model_dir

    torch.set_num_threads(args.threads)
    model = SentenceTransformer(str(default_embedding_model_dir()), device="cpu")
    texts = sentences()
    model.encode(texts, batch_size=NUM_SENTENCES)
    walls = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        vectors = model.encode(texts, batch_size=NUM_SENTENCES)
        walls.append(time.perf_counter() - started)
    wall = statistics.median(walls)
    return {"wall_s": wall, "walls_s": walls, "inputs_per_s": NUM_SENTENCES / wall}, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="decoder checkpoint (Score)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--hf-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads of the baselines")
    parser.add_argument("--max-model-len", type=int, default=1024)
    parser.add_argument("--max-num-seqs", type=int, default=32)
    parser.add_argument("--core-arg", action="append", default=[])
    parser.add_argument("--core-log", default="/tmp/bench-score-embed-core.log")
    parser.add_argument("--startup-timeout-s", type=float, default=900)
    parser.add_argument("--embedding-model-name", default="all-MiniLM-L6-v2")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    args.target = None
    args.extra_core_args = ()  # the bundled embedding model is served too

    ours, our_vectors = tandem(args)
    hf = hf_score(args)
    st, st_vectors = st_embed(args)
    score_speedup = hf["wall_s"] / ours["score"]["wall_s"]
    embed_ratio = ours["embed"]["inputs_per_s"] / st["inputs_per_s"]
    cosines = np.sum(our_vectors * st_vectors, axis=1) / (
        np.linalg.norm(our_vectors, axis=1) * np.linalg.norm(st_vectors, axis=1))
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "tandem": ours, "hf_score": hf, "st_embed": st,
        "score_speedup_vs_hf": score_speedup, "embed_throughput_vs_st": embed_ratio,
        "min_cosine_vs_st": float(cosines.min()),
    }
    print(f"score: Tandem {ours['score']['wall_s'] * 1e3:.0f} ms (cached tokens "
          f"{ours['score']['cached_tokens'][0]}) vs HF one by one {hf['wall_s'] * 1e3:.0f} ms "
          f"→ {score_speedup:.1f}× (target ≥ {TARGETS['score_speedup_vs_hf']}×)")
    print(f"embed: Tandem {ours['embed']['inputs_per_s']:.0f} inputs/s vs sentence-transformers "
          f"{st['inputs_per_s']:.0f} inputs/s → {embed_ratio:.2f}× (target ≥ "
          f"{TARGETS['embed_throughput_vs_st']}×); min cosine {cosines.min():.6f}")
    print(f"compilations after warm-up: {ours['compilations_after_warmup']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
