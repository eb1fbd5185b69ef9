"""Scheduler output → bucketed arrays → jitted model steps → sampled tokens.

Owns: the model's parameters and the KV page pool on device, the jitted step — a forward pass
over pages to last-token logits (the pool donated), then on-device sampling under an optional
grammar bitmask — padding work to the shape buckets, compiling every bucket at warm-up, and
counting compilations. The two halves are two calls the engine makes in turn: `dispatch()`
starts the forward passes and returns at once (JAX dispatch is asynchronous) with a
`DispatchedStep`; the engine fills the grammar bitmask on the host while the device computes;
`sample()` samples under that bitmask and copies the results back (its halves, `sample_async()`
and `fetch()`, let async scheduling dispatch the next decode step, `dispatch_continued()`, from
the sampled tokens still on device). The runner never calls into the engine. The sampler
compiles once per row count. Logits stay on device unless a Score chunk is in the call (its
labels' log-softmax is computed on the host, in float64, from the copied row).

One engine step runs two kinds of call, both the same jitted functions at different shapes: all
single-token rows (decodes) together as [rows bucket, 1] with page tables padded to a width
bucket, and the prefill chunks packed longest first into [rows, length bucket] calls with one
of two page-table widths (`EngineConfig.prefill_shapes`, `prefill_page_buckets`). Keeping the
two apart makes the number of shapes the sum, not the product, of the two families.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core.cache.kv_pool import KVPages, paged_attention_kind
from core.config import EngineConfig, bucket
from core.engine import executables, sharding
from core.engine import logits_processors as processors
from core.engine.request import SamplingParams, SchedulerOutput, SequenceChunk, TokenLogprob
from core.engine.sampling import SampleResult, SamplingArrays, sample
from core.engine.steps import DispatchedStep, PromptScores, SampledStep, StepOutput
from core.engine.verifier import Verifier
from core.model_config import ModelConfig
from core.models.llama import PADDING_POSITION, LlamaModel
from tandem.limits import MAX_TOP_LOGPROBS

log = logging.getLogger(__name__)
_NEUTRAL = SamplingParams()


class ModelRunner:
    def __init__(self, model: LlamaModel, config: ModelConfig, engine_config: EngineConfig):
        if not engine_config.is_resolved:
            raise ValueError("the runner takes a resolved EngineConfig (core.config.resolve_model)")
        self.config = config
        self.engine_config = engine_config
        self._graphdef, state = nnx.split(model)
        tensor_parallel = engine_config.tensor_parallel
        if tensor_parallel > 1:  # parameters and KV pages split over a mesh (engine/sharding.py)
            mesh = sharding.make_mesh(tensor_parallel)
            rules = sharding.logical_rules(config, tensor_parallel)
            state = sharding.shard_params(state, mesh, rules)
        # the parameters as a flat list: flattening an nnx.State on every call cost ~0.5 ms
        self._param_leaves, self._param_treedef = jax.tree.flatten(state)
        dtype = jnp.bfloat16 if engine_config.dtype == "bfloat16" else jnp.float32
        self.page_size = engine_config.page_size
        self.num_pages = engine_config.num_pages
        # one extra page: the model's scratch page for padding writes (never allocated)
        kind = paged_attention_kind()
        if tensor_parallel > 1 and kind == "cpu-kernel":  # the kernel knows no mesh: XLA's path
            kind = "gather"
        self._pages = KVPages.create(config, self.num_pages + 1, self.page_size, dtype, kind)
        out_shardings, self._replicated = None, None
        if tensor_parallel > 1:
            pool = sharding.pool_sharding(mesh, rules, self._pages.kind)
            self._pages = jax.device_put(self._pages, pool)
            self._replicated = sharding.replicated(mesh)
            out_shardings = (self._replicated, jax.tree.map(lambda _: pool, self._pages))
        self._prefill_buckets = engine_config.prefill_buckets()
        self._prefill_rows: dict[int, tuple[int, ...]] = {}  # chunk length → row buckets
        for num_rows, num_tokens in engine_config.prefill_shapes():
            self._prefill_rows[num_tokens] = (*self._prefill_rows.get(num_tokens, ()), num_rows)
        self._decode_buckets = engine_config.decode_buckets()
        self._page_buckets = engine_config.page_buckets()
        self._prefill_page_buckets = engine_config.prefill_page_buckets()
        self.num_compilations = 0  # traces of the step functions (one per new shape)
        self.compilations_at_warmup = 0
        # per-sequence logits state (penalty counts, bias rows): one slot per running sequence
        self.num_row_slots = engine_config.max_num_seqs
        self._row_state = processors.RowState.create(self.num_row_slots, config.vocab_size)
        if out_shardings is not None:  # ... the row state and the prompt scores: replicated
            self._row_state = jax.device_put(self._row_state, self._replicated)
            out_shardings = (*out_shardings, self._replicated)
        self._forward = jax.jit(self._forward_fn, donate_argnames=("pages",),
                                out_shardings=out_shardings)
        self._sample = jax.jit(self._sample_fn, donate_argnames=("row_state",))
        self._init_row = jax.jit(self._init_row_fn, donate_argnames=("state",))
        # the warm-up's executables: call shape → forward, row count → sampler (executables.py)
        self._forward_executables: dict[tuple[int, int, int], Callable] = {}
        self._sample_executables: dict[int, Callable] = {}
        self._gather = jax.jit(self._gather_fn)  # async scheduling's input tokens
        self._gather_executables: dict[int, Callable] = {}  # decode rows → its warm-up's
        self.verifier = None  # speculation's verify calls (--speculative-ngram)
        if engine_config.speculative_ngram:
            self.verifier = Verifier(self, engine_config.speculative_ngram,
                                     out_shardings[:2] if out_shardings else None)
        self.num_bitmask_words = -(-config.vocab_size // 32)  # int32 words of a grammar mask row
        self._unconstrained: dict[int, jax.Array] = {}  # rows → an all-allowed mask on device
        log.info("KV pool: %d pages × %d tokens", self.num_pages, self.page_size)

    @property
    def compilations_after_warmup(self) -> int:
        return self.num_compilations - self.compilations_at_warmup

    @property
    def graphdef(self):
        """The model's structure (`nnx.merge` it with `param_leaves`)."""
        return self._graphdef

    @property
    def param_leaves(self) -> list:
        """The parameters as a flat list of (possibly sharded) device arrays."""
        return self._param_leaves

    @property
    def param_treedef(self):
        return self._param_treedef

    @property
    def pages(self) -> KVPages:
        return self._pages

    @property
    def page_buckets(self) -> tuple[int, ...]:
        """Page-table widths of decode (and verify) calls."""
        return self._page_buckets

    @property
    def replicated(self):
        """The sharding of replicated arrays (None on one device)."""
        return self._replicated

    def _forward_fn(self, param_leaves, pages, token_ids, positions, page_table, last_index,
                    prompt_targets, wants_prompt_logprobs):
        self.num_compilations += 1  # runs only while tracing
        model = nnx.merge(self._graphdef, jax.tree.unflatten(self._param_treedef, param_leaves))
        hidden, pages = model(token_ids, positions, page_table, pages)  # [b, t, d]
        rows = jnp.arange(token_ids.shape[0])
        logits = model.logits(hidden[rows, last_index])  # [b, v]
        num_top = min(MAX_TOP_LOGPROBS, logits.shape[-1])

        def score_prompt(hidden):  # every position's log-softmax: only when someone asked
            logprobs = jax.nn.log_softmax(model.logits(hidden), axis=-1)  # [b, t, v]
            chosen = jnp.take_along_axis(logprobs, prompt_targets[..., None], axis=-1)[..., 0]
            top_logprobs, top_ids = jax.lax.top_k(logprobs, num_top)
            return PromptScores(chosen, top_ids.astype(jnp.int32), top_logprobs)

        def no_scores(hidden):
            shape = hidden.shape[:2]
            return PromptScores(jnp.zeros(shape, jnp.float32),
                                jnp.zeros((*shape, num_top), jnp.int32),
                                jnp.zeros((*shape, num_top), jnp.float32))

        if token_ids.shape[1] == 1:  # decode calls never score a prompt (execute routes them)
            prompt_scores = no_scores(hidden)
        else:
            prompt_scores = jax.lax.cond(wants_prompt_logprobs, score_prompt, no_scores, hidden)
        # the logits stay on device unless a Score reads them
        return logits, pages, prompt_scores

    def _sample_fn(self, logits, sampling, positions, wants_logprobs, bitmask, has_bitmask,
                   row_inputs, row_state):
        self.num_compilations += 1  # runs only while tracing: once per row bucket
        result = sample(logits, sampling, positions, wants_logprobs, row_inputs, row_state,
                        bitmask, has_bitmask)
        return result, processors.count_sampled(row_state, row_inputs, result.token_ids)

    def _init_row_fn(self, state, slot, bias, token_ids, num_prompt_tokens, num_tokens):
        self.num_compilations += 1  # runs only while tracing
        return processors.init_row(state, slot, bias, token_ids, num_prompt_tokens, num_tokens)

    def dispatch(self, output: SchedulerOutput) -> DispatchedStep:
        """Start every forward pass of the step and return at once: the device works from here
        on. The per-row stages' state is rebuilt first for sequences (re)admitted in the step."""
        self._init_rows(output.chunks)
        verify = [i for i, chunk in enumerate(output.chunks) if chunk.draft_token_ids]
        # a Score's last token goes with the prefills: its call then copies ≤ 4 rows of logits
        # ... and so does a prompt chunk whose logprobs are reported
        prefills = [i for i, chunk in enumerate(output.chunks)
                    if not chunk.draft_token_ids and (
                        len(chunk.token_ids) > 1 or chunk.wants_scores
                        or chunk.wants_prompt_logprobs)]
        decodes = sorted(set(range(len(output.chunks))) - set(prefills) - set(verify))
        groups = []  # (chunk indices, call shape)
        if decodes:
            widest = max(len(output.chunks[i].page_ids) for i in decodes)
            groups.append((decodes, (bucket(self._decode_buckets, len(decodes)), 1,
                                     bucket(self._page_buckets, widest))))
        groups += self._pack_prefills(output.chunks, prefills)
        forwards = [(group, self._call_forward([output.chunks[i] for i in group], shape))
                    for group, shape in groups]
        verifies = []
        if verify:  # the scheduler keeps them within one call's rows
            self._pages, _, result = self.verifier.dispatch(
                self._pages, [output.chunks[i] for i in verify], output.wants_logprobs)
            verifies.append((verify, result))
        return DispatchedStep(output, forwards, verifies)

    def sample(self, step: DispatchedStep, bitmask: np.ndarray | None = None,
               constrained: frozenset[int] = frozenset()) -> StepOutput:
        """Sample every call of a dispatched step and copy the results to the host; rows of
        chunks that sample nothing hold junk. `bitmask` [chunks, words] is the step's grammar
        bitmask and `constrained` the chunk indices it restricts (calls without one skip the
        mask). The per-row stages' state (penalty counts) is bumped by each call in turn."""
        return self.fetch(self.sample_async(step, bitmask, constrained))

    def sample_async(self, step: DispatchedStep, bitmask: np.ndarray | None = None,
                     constrained: frozenset[int] = frozenset()) -> SampledStep:
        """`sample` without the copy: every call's sampling dispatched, the results left on
        device."""
        output = step.output
        calls = []  # (chunk indices, device result, scores, prompt scores)
        for group, (logits, prompt_scores, sample_inputs) in step.forwards:
            rows = None
            if bitmask is not None and constrained.intersection(group):
                rows = np.full((len(sample_inputs[1]), self.num_bitmask_words), -1, np.int32)
                rows[:len(group)] = bitmask[group]
            result = self._call_sample(logits, sample_inputs, output.wants_logprobs, rows)
            chunks = [output.chunks[i] for i in group]
            scores = logits if any(chunk.wants_scores for chunk in chunks) else None
            if not any(chunk.wants_prompt_logprobs for chunk in chunks):
                prompt_scores = None
            calls.append((group, result, scores, prompt_scores))
        return SampledStep(output, calls, step.verifies)

    def fetch(self, step: SampledStep) -> StepOutput:
        """Copy a sampled step's results to the host (waiting for the device)."""
        output, calls = step.output, step.calls
        # one transfer for everything; the top-k arrays only when someone asked for them
        wanted = [(r.token_ids, r.logprobs, *((r.top_ids, r.top_logprobs)
                                              if output.wants_logprobs else ()), scores, prompt)
                  for _, r, scores, prompt in calls]
        host_verifies = jax.device_get([result for _, result in step.verifies])
        result = self._step_output(output, calls, jax.device_get(wanted))
        for (indices, _), host in zip(step.verifies, host_verifies, strict=True):
            chunks = [output.chunks[i] for i in indices]
            verified = Verifier.results(chunks, host, self.verifier.num_tokens)
            result.verified.update(zip(indices, verified, strict=True))
        return result

    def execute(self, output: SchedulerOutput) -> StepOutput:
        """Dispatch and sample a step with no grammar (benchmarks, tests)."""
        return self.sample(self.dispatch(output))

    @property
    def supports_async_scheduling(self) -> bool:
        """Can a step's input tokens come from the previous step's device output
        (`dispatch_continued`)? On one device only (a mesh would need the tokens' sharding)."""
        return self.engine_config.tensor_parallel == 1

    def decode_rows(self, num_chunks: int) -> int:
        """The padded row count of a decode call of `num_chunks` chunks."""
        return bucket(self._decode_buckets, num_chunks)

    def dispatch_continued(self, output: SchedulerOutput, previous: SampledStep,
                           rows: list[int]) -> DispatchedStep:
        """Start a step of decode chunks only whose input tokens are still on device: chunk i
        is fed the token that row `rows[i]` of `previous`'s one decode call sampled (async
        scheduling; the chunks' own token ids are placeholders). The call keeps `previous`'s
        row count, so the tokens are gathered in one executable per decode bucket."""
        _, previous_tokens = previous.decode_call()
        num_rows = previous_tokens.shape[0]
        if self.decode_rows(len(output.chunks)) != num_rows:
            raise ValueError("a continued step keeps the previous decode call's row bucket")
        widest = max(len(chunk.page_ids) for chunk in output.chunks)
        shape = (num_rows, 1, bucket(self._page_buckets, widest))
        source = np.zeros(num_rows, np.int32)
        source[:len(rows)] = rows
        gather = self._gather_executables.get(num_rows, self._gather)
        arrays, sample_inputs = self._forward_inputs(list(output.chunks), shape)
        arrays = (gather(previous_tokens, source), *arrays[1:])
        forward = self._forward_executables.get(shape, self._forward)
        logits, self._pages, prompt_scores = forward(self._param_leaves, self._pages, *arrays)
        indices = list(range(len(output.chunks)))
        return DispatchedStep(output, [(indices, (logits, prompt_scores, sample_inputs))])

    def _gather_fn(self, token_ids, source):
        """[rows] sampled ids → [rows, 1] input ids of the next decode call, row i ← source[i]."""
        self.num_compilations += 1  # runs only while tracing: once per decode bucket
        return token_ids[source][:, None]

    def _step_output(self, output: SchedulerOutput, calls, host) -> StepOutput:
        """Scatter the host copies of each call's rows back into chunk order."""
        num_chunks, num_top = len(output.chunks), min(MAX_TOP_LOGPROBS, self.config.vocab_size)
        step = StepOutput(np.zeros(num_chunks, np.int32), np.zeros(num_chunks, np.float32),
                          np.zeros((num_chunks, num_top), np.int32),
                          np.zeros((num_chunks, num_top), np.float32), {})
        for (indices, *_), arrays in zip(calls, host, strict=True):
            count = len(indices)
            step.token_ids[indices] = arrays[0][:count]
            step.logprobs[indices] = arrays[1][:count]
            if output.wants_logprobs:
                step.top_ids[indices] = arrays[2][:count]
                step.top_logprobs[indices] = arrays[3][:count]
            scores, prompt = arrays[-2], arrays[-1]
            for row, index in enumerate(indices):
                chunk = output.chunks[index]
                if scores is not None and chunk.wants_scores:
                    step.score_logprobs[index] = _log_softmax(scores[row])
                if prompt is not None and chunk.wants_prompt_logprobs:
                    step.prompt_logprobs[index] = _prompt_entries(chunk, prompt, row)
        return step

    def _pack_prefills(self, chunks: tuple[SequenceChunk, ...], indices: list[int]):
        """Groups of prefill chunk indices with their call shape, longest chunks first."""
        order = sorted(indices, key=lambda i: -len(chunks[i].token_ids))
        while order:
            num_tokens = bucket(self._prefill_buckets, len(chunks[order[0]].token_ids))
            row_buckets = self._prefill_rows[num_tokens]
            group, order = order[:row_buckets[-1]], order[row_buckets[-1]:]
            widest = max(len(chunks[i].page_ids) for i in group)
            yield group, (bucket(row_buckets, len(group)), num_tokens,
                          bucket(self._prefill_page_buckets, widest))

    def _call_forward(self, chunks: list[SequenceChunk], shape: tuple[int, int, int]):
        """Dispatch one forward pass; returns its device logits [rows, v], its prompt scores and
        what sampling them needs (the rows' sampling arrays, positions and per-row inputs)."""
        arrays, sample_inputs = self._forward_inputs(chunks, shape)
        forward = self._forward_executables.get(shape, self._forward)
        logits, self._pages, prompt_scores = forward(self._param_leaves, self._pages, *arrays)
        return logits, prompt_scores, sample_inputs

    def _forward_inputs(self, chunks: list[SequenceChunk], shape: tuple[int, int, int]):
        """The padded host arrays of one forward call (after the parameters and the pool), and
        the sampling inputs of its rows."""
        num_rows, num_tokens, num_table_pages = shape
        token_ids = np.zeros((num_rows, num_tokens), np.int32)
        positions = np.full((num_rows, num_tokens), PADDING_POSITION, np.int32)
        page_table = np.zeros((num_rows, num_table_pages), np.int32)
        last_index = np.zeros((num_rows,), np.int32)
        for row, chunk in enumerate(chunks):
            length = len(chunk.token_ids)
            token_ids[row, :length] = chunk.token_ids
            positions[row, :length] = np.arange(chunk.start_position,
                                                chunk.start_position + length)
            page_table[row, :len(chunk.page_ids)] = chunk.page_ids
            last_index[row] = length - 1
        sampling = SamplingArrays.from_params([chunk.sampling for chunk in chunks], num_rows)
        row_inputs = processors.RowInputs.from_chunks(chunks, num_rows, self.num_row_slots,
                                                      self.config.vocab_size)
        prompt_targets = np.zeros((num_rows, num_tokens), np.int32)
        for row, chunk in enumerate(chunks):
            prompt_targets[row, :len(chunk.prompt_targets)] = chunk.prompt_targets
        arrays = (token_ids, positions, page_table, last_index, prompt_targets,
                  np.bool_(any(chunk.wants_prompt_logprobs for chunk in chunks)))
        sample_positions = positions[np.arange(num_rows), last_index] + 1
        return arrays, (sampling, sample_positions, row_inputs)

    def _call_sample(self, logits: jax.Array, sample_inputs, wants_logprobs: bool,
                     bitmask: np.ndarray | None) -> SampleResult:
        """Dispatch sampling of one call's logits, under `bitmask` [rows, words] if given; the
        row state (penalty counts) goes in and comes back bumped."""
        sampling, positions, row_inputs = sample_inputs
        num_rows, has_bitmask = len(positions), bitmask is not None
        if bitmask is None:  # a device constant per row count: nothing to copy or unpack
            bitmask = self._all_allowed(num_rows)
        sample = self._sample_executables.get(num_rows, self._sample)
        result, self._row_state = sample(
            logits, sampling, positions, np.bool_(wants_logprobs), bitmask, np.bool_(has_bitmask),
            row_inputs, self._row_state)
        return result

    def _all_allowed(self, num_rows: int) -> jax.Array:
        """An all-allowed grammar bitmask [rows, words] on device (one per row count)."""
        if num_rows not in self._unconstrained:
            self._unconstrained[num_rows] = jax.device_put(
                np.full((num_rows, self.num_bitmask_words), -1, np.int32), self._replicated)
        return self._unconstrained[num_rows]

    def _call(self, chunks: list[SequenceChunk], shape: tuple[int, int, int],
              wants_logprobs: bool) -> tuple[SampleResult, jax.Array, PromptScores]:
        """Forward and sample one call without a grammar (warm-up)."""
        logits, prompt_scores, sample_inputs = self._call_forward(chunks, shape)
        result = self._call_sample(logits, sample_inputs, wants_logprobs, None)
        return result, logits, prompt_scores

    def _init_rows(self, chunks: tuple[SequenceChunk, ...]) -> None:
        """Rebuild the row state of sequences (re)admitted in this step."""
        max_len = self.engine_config.max_model_len
        for chunk in chunks:
            if chunk.row_init is None:
                continue
            token_ids, num_prompt_tokens = chunk.row_init
            padded = np.zeros(max_len, np.int32)
            padded[:len(token_ids)] = token_ids
            self._row_state = self._init_row(
                self._row_state, np.int32(chunk.row_slot),
                processors.bias_row(chunk.sampling, self.config.vocab_size), padded,
                np.int32(num_prompt_tokens), np.int32(len(token_ids)))

    def warmup(self) -> None:
        """Compile every shape once (in parallel; loaded from the executable store when it has
        them, core/engine/executables.py); the compilation counter starts after this."""
        shapes = [(b, 1, p) for b in self._decode_buckets for p in self._page_buckets]
        shapes += [(rows, tokens, pages) for rows, tokens in self.engine_config.prefill_shapes()
                   for pages in self._prefill_page_buckets]
        # (speculation and jump-forward change no executable but the verify calls, which are
        # named by their shapes: an engine that differs only in them loads the same store)
        # (nor does async scheduling: its gathers are executables of their own)
        unchanged = replace(self.engine_config, speculative_ngram=0, jump_forward=True,
                            async_scheduling=False)
        static = repr((self.config, unchanged, self._pages.kind,
                       self.num_pages, self.num_row_slots))
        jobs = []
        for shape in shapes:
            arrays, _ = self._forward_inputs([], shape)
            jobs.append(executables.CompileJob(
                "forward {}×{}×{}".format(*shape), self._forward,
                (self._param_leaves, self._pages, *arrays), static))
        row_counts = sorted({rows for rows, _, _ in shapes})
        for rows in row_counts:
            _, (sampling, positions, row_inputs) = self._forward_inputs([], (rows, 1, 1))
            logits = jax.ShapeDtypeStruct((rows, self.config.vocab_size), jnp.float32,
                                          sharding=self._replicated)
            jobs.append(executables.CompileJob(
                f"sampler {rows}", self._sample,
                (logits, sampling, positions, np.bool_(False), self._all_allowed(rows),
                 np.bool_(False), row_inputs, self._row_state), static))
        gather_rows = self._decode_buckets if self.supports_async_scheduling else ()
        for rows in gather_rows:
            jobs.append(executables.CompileJob(
                f"gather {rows}", self._gather,
                (jax.ShapeDtypeStruct((rows,), jnp.int32), np.zeros(rows, np.int32)), static))
        started = time.perf_counter()

        def report(index: int, job: executables.CompileJob, seconds: float, loaded: bool):
            log.info("warm-up %d/%d: %s %s in %.2f s", index + 1, len(jobs), job.name,
                     "loaded" if loaded else "compiled", seconds)

        verify_keys = []
        if self.verifier is not None:
            verify_keys, verify_jobs = self.verifier.compile_jobs(static)
            jobs += verify_jobs
        compiled = executables.compile_all(jobs, on_done=report)
        if self.verifier is not None:
            self.verifier.set_executables(verify_keys, compiled[len(compiled) - len(verify_keys):])
            compiled = compiled[:len(compiled) - len(verify_keys)]
        self._forward_executables = dict(zip(shapes, compiled[:len(shapes)], strict=True))
        num_samplers = len(row_counts)
        self._sample_executables = dict(zip(
            row_counts, compiled[len(shapes):len(shapes) + num_samplers], strict=True))
        self._gather_executables = dict(zip(
            gather_rows, compiled[len(shapes) + num_samplers:], strict=True))
        # one run of every shape (all padding: nothing is written to the pool): an executable's
        # first run sets itself up (buffers, the dot library's packed operands) — a 32-stream
        # benchmark's first round ran at ~75% speed without this
        for shape in shapes:
            jax.block_until_ready(self._call([], shape, False))
        for rows, gather in self._gather_executables.items():
            jax.block_until_ready(gather(np.zeros(rows, np.int32), np.zeros(rows, np.int32)))
        if self.verifier is not None:
            self._pages = self.verifier.warm_run(self._pages)
        scratch = self.num_row_slots  # the row-state rebuild: written to the scratch slot
        self._init_rows((SequenceChunk("warmup", (0,), 0, (), _NEUTRAL, False,
                                       row_slot=scratch, row_init=((), 0)),))
        self.compilations_at_warmup = self.num_compilations
        log.info("warm-up: %d executables ready in %.1f s", len(jobs),
                 time.perf_counter() - started)


def _prompt_entries(chunk: SequenceChunk, prompt: PromptScores, row: int) -> list[TokenLogprob]:
    return [TokenLogprob(token_id, float(prompt.logprobs[row, i]),
                         tuple(zip(prompt.top_ids[row, i].tolist(),
                                   prompt.top_logprobs[row, i].tolist(), strict=True)))
            for i, token_id in enumerate(chunk.prompt_targets)]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    """float32 logits [v] → float64 log-probabilities [v] (a Score's labels read them)."""
    shifted = logits.astype(np.float64) - logits.max()
    return shifted - np.log(np.exp(shifted).sum())

