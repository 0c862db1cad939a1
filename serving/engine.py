"""The engine: one thread that batches requests across tasks and adapters and decodes them.

    gRPC threads --submit--> queue --> engine thread (at most max_queue requests accepted
    and not yet running, wherever they wait: queued, loading their adapter, ready):
        bind      the adapter version (the active one unless the request names one) and
                  take a reference on it, so a hot-swap cannot free it mid-request
                  (`serving.lifecycle.AdapterLifecycle`, which this thread owns)
        wait      for the version to reach host memory (loaded off the request path)
        admit     up to max_batch requests: a slot in the device bank per (adapter, task)
        start     vision tower once per distinct image (LRU keyed by sha256), then
                  candidate scoring (NLVR2, multiple choice) in one call, and one encoder
                  pass for the generating rows
        step      one decoder pass over every running row (a greedy request's row, each
                  live beam of a beam-search request), one new token each; a finished
                  request leaves, a waiting one joins at the next step (iteration-level
                  batching, beams included, so a long beam search never stalls the rest)

Decoding is `modeling.decoding.DecodeBatch`, the one decode loop (offline generation uses
it too): the engine joins encoded requests to it, steps it and answers the requests it
returns finished. A joining row's first step computes its cross-attention keys/values
once, then every step feeds one token per cache row; rows of different lengths share one
left-padded, masked cache, and a beam step reorders its request's rows.

A streaming greedy request sends the text each step settles (`modeling.decoding.
stream_piece`: never an unfinished character or word, never an empty piece); when a
streaming request ends, the rest of its text follows, so its pieces join to its answer.
A beam request (its best hypothesis is only known at the end) and a scoring one stream
their whole text as one piece.

Only this thread runs the model (the KServe vision model too: `vision_features`), uses the
backbone's tokenizer (request threads count tokens with their own copy) or changes the
adapter lifecycle and the slot table; other threads talk to it through the queue and
`call`, which runs a function here between two steps and hands back its result.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import TypeVar

import grpc
import torch

from modeling.backbone import VLBackbone, VLBatch
from modeling.decoding import DecodeBatch, DecodeRow, stream_piece
from modeling.generation import score_candidates
from modeling.inputs import VisualTokens, candidate_ids, make_batch
from modeling.kernels import RowIndex
from modeling.tasks import VisualInput
from serving.adapter_store import AdapterStore
from serving.commands import Commands
from serving.lifecycle import AdapterLifecycle
from serving.requests import (
    NoMetrics,
    Prediction,
    Request,
    RequestError,
    call_cancelled,
    deadline_exceeded,
    error_for,
    time_left,
)
from serving.slot_table import NoFreeSlot, SlotTable
from serving.vision_backends import TorchVisionEncoder, VisionEncoder
from serving.vision_cache import VisionCache, encode_pixels, visual_tokens

__all__ = ["Engine", "NoMetrics", "Prediction", "Request", "RequestError", "error_for"]

log = logging.getLogger("vladapter.serving")

T = TypeVar("T")


class Engine:
    """The scheduler thread over one backbone, an adapter store and a slot table; it owns
    their adapter lifecycle (`adapters`)."""

    def __init__(self, backbone: VLBackbone, store: AdapterStore, slot_table: SlotTable,
                 vision: VisionCache, max_batch: int = 8, max_queue: int = 64,
                 max_queue_delay_ms: float = 5.0, metrics=None,
                 vision_encoder: VisionEncoder | None = None, load_on_demand: bool = False):
        """vision_encoder: pixels -> features (None: the backbone's tower in torch eager);
        load_on_demand: a request for an adapter that is not loaded loads it
        (`AdapterLifecycle.load_on_demand`, on the request's thread).

        max_queue: requests accepted and not yet running, at most; more: RESOURCE_EXHAUSTED.
        """
        self.backbone, self.slot_table, self.vision = backbone, slot_table, vision
        self.metrics = metrics or NoMetrics()
        self.adapters = AdapterLifecycle(store, slot_table, self.call, load_on_demand,
                                         self.metrics.on_demand_load)
        self.vision_encoder = vision_encoder
        self.tokenizer = backbone.tokenizer
        self.max_batch, self.max_queue_delay = max_batch, max_queue_delay_ms / 1000.0
        self.max_queue = max_queue
        self.stats: Counter[str] = Counter()
        self._queue: queue.SimpleQueue[Request | None] = queue.SimpleQueue()  # None: wake up
        # Accepted and not yet running (queued, loading, ready): submit adds under the lock,
        # the engine removes as a request starts or ends, so the bound holds at every moment.
        self._waiting: set[Request] = set()
        self._waiting_lock = threading.Lock()
        self._commands = Commands(wake=lambda: self._queue.put(None))
        self._loading: list[Request] = []
        self._ready: deque[Request] = deque()
        self._decoding = DecodeBatch(backbone)  # the running requests (rows' owner)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine", daemon=True)
        parameter = next(backbone.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    # --- the outside ---------------------------------------------------------------------
    def start(self) -> None:
        self._commands.start(self._thread)

    def submit(self, request: Request) -> None:
        """Queue a request; max_queue requests already waiting to run is RESOURCE_EXHAUSTED,
        a stopping engine UNAVAILABLE."""
        if self._stopping.is_set():
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
        with self._waiting_lock:
            if len(self._waiting) >= self.max_queue:
                raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                   f"the request queue is full (max_queue={self.max_queue} "
                                   "requests accepted and not yet running)")
            self._waiting.add(request)
            depth = len(self._waiting)
        self._queue.put(request)
        self.metrics.queue_depth(depth)

    def stop(self, timeout: float | None = None) -> None:
        """Finish every queued and running request, then stop the thread."""
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn()` on the engine thread before its next step; returns its result or
        raises its exception (the caller waits). Until `start()`, and once the thread has
        ended, the caller runs it, one caller at a time (`serving.commands`)."""
        return self._commands.call(fn)

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [n, 3, H, W] float32 -> features [n, grid*grid, feat_dim] float32 on the
        host, by the server's vision encoder on the engine thread (KServe's vision model)."""
        encoder = self.vision_encoder or TorchVisionEncoder(self.backbone)
        return self.call(lambda: encode_pixels(encoder, pixels, self.device, self.dtype))

    def running(self) -> bool:
        """Whether the engine thread runs (started, not ended): the server's readiness."""
        return self._thread.is_alive()

    def in_flight(self) -> int:
        """Requests accepted and not answered (waiting or running)."""
        return len(self._waiting) + len(self._running)

    @property
    def _running(self) -> list[DecodeRow]:
        """The requests being decoded (`row.owner` is the Request)."""
        return self._decoding.rows

    # --- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        self.adapters.claim(threading.get_ident())
        try:
            self._loop()
        finally:
            self.adapters.claim(None)
            self._commands.end()  # commands queued from now on run on their callers

    def _loop(self) -> None:
        while True:
            self._commands.run_pending()
            if self._stopping.is_set() and self.in_flight() == 0:
                return
            self._take(self._wait_time())
            self._poll_loading()
            self._drop_dead()
            admitted = self._admit()
            try:
                if admitted:
                    self._start(admitted)
                if self._running:
                    self._step()
            except Exception as exc:  # a bug in one step must not stop the server
                log.exception("engine step failed")
                self._fail_all_running(error_for(exc))

    def _wait_time(self) -> float:
        if self._running or self._commands.pending():
            return 0.0
        if self._ready:
            return max(0.0, self.max_queue_delay - (time.monotonic() - self._ready[0].enqueued))
        return 0.005 if self._loading else 0.05

    def _take(self, timeout: float) -> None:
        try:
            first = self._queue.get(timeout=timeout) if timeout > 0 else \
                self._queue.get_nowait()
        except queue.Empty:
            return
        taken = [first]
        while True:  # at most max_queue: submit admits no more than that
            try:
                taken.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for request in taken:
            if request is not None:
                self._bind(request)

    def _bind(self, request: Request) -> None:
        """Fix the adapter version of a request and hold a reference on it."""
        try:
            self.adapters.bind(request)
        except RequestError as error:
            self._finish(request, error)
            return
        self._loading.append(request)

    def _poll_loading(self) -> None:
        for request in [r for r in self._loading if r.loading.done()]:
            self._loading.remove(request)
            exc = request.loading.exception()
            if exc is not None:
                self._finish(request, error_for(exc))
                continue
            adapter = self.adapters.loaded(request)
            if request.task.name not in adapter.serve:
                self._finish(request, RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"adapter {request.adapter_name}:{request.bound_version} has no task "
                    f"{request.task.name!r} (tasks: {', '.join(adapter.tasks)})"))
                continue
            self._ready.append(request)

    def _drop_dead(self) -> None:
        """Answer cancelled and expired requests wherever they wait, freeing their slots."""
        now = time.monotonic()

        def dead(request: Request) -> RequestError | None:
            # The deadline first: gRPC also cancels a call whose deadline passed.
            if time_left(request.deadline, now) == 0.0:
                self.stats["deadline_exceeded"] += 1
                return deadline_exceeded("the answer was ready")
            if request.cancelled.is_set():
                self.stats["cancelled"] += 1
                return call_cancelled("the answer was ready")
            return None

        for waiting in (self._loading, self._ready):
            for request in list(waiting):
                error = dead(request)
                if error is not None:
                    waiting.remove(request)
                    self._finish(request, error)
        gone = []
        for row in self._running:
            error = dead(row.owner)
            if error is not None:
                self._finish(row.owner, error)
                gone.append(row)
        self._decoding.drop(gone)

    def _admit(self) -> list[Request]:
        """Take ready requests into the batch, each with a device slot for its adapter set."""
        room = self.max_batch - len(self._running)
        if not self._ready or room <= 0:
            return []
        waited = time.monotonic() - self._ready[0].enqueued
        if not self._running and len(self._ready) < room and waited < self.max_queue_delay \
                and not self._stopping.is_set():
            return []
        admitted: list[Request] = []
        while self._ready and len(admitted) < room:
            request = self._ready[0]
            try:
                self.adapters.place(request)
            except NoFreeSlot as exc:
                if self._running or admitted:
                    break  # slots free up as running rows finish
                self._ready.popleft()
                self._finish(request, RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)))
                continue
            self._ready.popleft()
            self._stop_waiting(request)
            request.timings["queue_ms"] = (time.monotonic() - request.enqueued) * 1000
            admitted.append(request)
        return admitted

    def _stop_waiting(self, request: Request) -> None:
        """`request` starts or ends: it no longer counts against max_queue."""
        with self._waiting_lock:
            self._waiting.discard(request)
            depth = len(self._waiting)
        self.metrics.queue_depth(depth)

    # --- compute -------------------------------------------------------------------------
    def _start(self, admitted: list[Request]) -> None:
        """Vision once per distinct image, then candidate scoring, and one encoder pass for
        the generating requests (greedy and beam), which join the running rows."""
        admitted = self._grouped(admitted)
        start = time.perf_counter()
        try:
            visuals = self._visual_tokens(admitted)
        except Exception as exc:  # e.g. a remote vision server that is down
            log.exception("vision encoder failed")
            for request in admitted:
                self._finish(request, error_for(exc))
            return
        vision_ms = (time.perf_counter() - start) * 1000
        for request in admitted:
            request.timings["vision_ms"] = vision_ms
        self.metrics.batch(len(admitted),
                           len({(r.adapter_name, r.bound_version) for r in admitted}))
        scoring = [i for i, r in enumerate(admitted) if r.task.is_scored]
        generating = [i for i in range(len(admitted)) if i not in scoring]
        groups = [(self._score, scoring), (self._encode_and_join, generating)]
        for run, rows in groups:
            if not rows:
                continue
            members = [admitted[i] for i in rows]
            try:
                run(members, [visuals[i] for i in rows])
            except Exception as exc:  # one group's failure answers only its requests
                log.exception("batch group failed")
                for request in members:
                    if not request.done:
                        self._finish(request, error_for(exc))

    def _grouped(self, requests: list[Request]) -> list[Request]:
        """`requests` in an order where the rows of each adapter site are consecutive and
        each adapter's rows one run (`RowIndex.grouping`): their encoder pass (and scoring)
        computes each site on a view of the batch instead of gathering its rows, and each
        product runs once per adapter instead of copying every row's weights; so do decode
        steps while no other rows run beside them."""
        order = RowIndex.of([r.slot for r in requests]).grouping(
            self.slot_table.bank().used_by_sets())
        return requests if order is None else [requests[i] for i in order]

    def _visual_tokens(self, requests: list[Request]) -> list[VisualTokens]:
        """Per request its visual tokens; CLIP runs once over the distinct uncached images."""
        return visual_tokens(self.backbone, self.vision,
                             [(r.images, r.task.visual_input is VisualInput.VIDEO_FRAMES)
                              for r in requests], self.device, self.dtype,
                             self.vision_encoder)

    def _batch(self, requests: list[Request], visuals: list[VisualTokens]
               ) -> tuple[VLBatch, RowIndex]:
        config = self.backbone.config
        family = config.family  # decoder prompts as training reads them
        # Each text is cut where training cut it: at what the row's visual tokens and its
        # adapter's prompt vectors leave of the encoder's positions (the checker refused
        # text past what the visual tokens alone leave).
        budgets = [config.text_budget(visual.count, _prompt_vectors(request))
                   for request, visual in zip(requests, visuals, strict=True)]
        batch = make_batch(self.tokenizer, [r.source_text for r in requests], visuals,
                           text_budget=budgets,
                           decoder_prompts=[r.task.decoder_prompt_for(family) for r in requests])
        return batch.to(self.device, self.dtype), RowIndex.of([r.slot for r in requests],
                                                              device=self.device)

    def _score(self, requests: list[Request], visuals: list[VisualTokens]) -> None:
        """NLVR2 ("true"/"false") and multiple choice ("a0".."a{n-1}", or the options' texts
        for an adapter trained on them, summed or averaged per token: `ChoiceAnswer`) by
        candidate scoring."""
        answers = [r.adapter.choice_answer(r.task.name) for r in requests]
        labels = [r.task.candidate_labels(r.choices, answer)
                  for r, answer in zip(requests, answers, strict=True)]
        candidates = candidate_ids(self.tokenizer, labels)
        start = time.perf_counter()
        batch, index = self._batch(requests, visuals)
        scores = score_candidates(self.backbone, batch, candidates.to(self.device),
                                  self.slot_table.bank(), index,
                                  [answer.per_token for answer in answers]).float().cpu()
        elapsed = (time.perf_counter() - start) * 1000
        for request, row_labels, row_scores in zip(requests, labels, scores, strict=True):
            row = row_scores[:len(row_labels)].tolist()
            best = max(range(len(row)), key=row.__getitem__)
            text = request.task.answer_text(best, request.choices)
            request.timings.update(encode_ms=elapsed, decode_ms=0.0)
            self._answer(request, text, label=row_labels[best],
                         scores=list(zip(row_labels, row, strict=True)))

    @torch.no_grad()
    def _encode_and_join(self, requests: list[Request], visuals: list[VisualTokens]) -> None:
        """One encoder pass and the first decoder step; unfinished requests join the rows."""
        start = time.perf_counter()
        batch, index = self._batch(requests, visuals)
        bank = self.slot_table.bank()
        hidden, mask = self.backbone.encode(batch, bank, index)
        elapsed = (time.perf_counter() - start) * 1000
        rows = []
        for request, prompt in zip(requests, batch.decoder_prompts(), strict=True):
            request.timings["encode_ms"] = elapsed
            rows.append(DecodeRow(request.slot, request.max_new_tokens, request.num_beams,
                                  stream=self._streamer(request), owner=request,
                                  prompt=prompt))
        self._answer_decoded(self._decoding.join(rows, hidden, mask, bank))

    @torch.no_grad()
    def _step(self) -> None:
        """One decoder pass over every running row (one token each); finished requests leave."""
        rows = self._running
        self.stats["max_step_rows"] = max(self.stats["max_step_rows"], self._decoding.width)
        self.stats["max_step_slots"] = max(self.stats["max_step_slots"],
                                           len({row.slot for row in rows}))
        beam_requests = sum(row.beams is not None for row in rows)
        self.stats["steps_mixing_beams_and_greedy"] += 0 < beam_requests < len(rows)
        self._answer_decoded(self._decoding.step(self.slot_table.bank()))

    @staticmethod
    def _streamer(request: Request) -> Callable[[str], None] | None:
        """What a streaming request's settled pieces go to (None: it does not stream)."""
        if not request.stream:
            return None
        return lambda piece: request.events.put(("token", piece))

    def _answer_decoded(self, rows: list[DecodeRow]) -> None:
        """Answer the requests whose decoding finished (their rest of stream follows)."""
        for row in rows:
            row.owner.timings["decode_ms"] = (time.perf_counter() - row.started) * 1000
            self._answer(row.owner, row.text, streamed=row.streamed)

    # --- endings -------------------------------------------------------------------------
    def _answer(self, request: Request, text: str, label: str = "",
                scores: list[tuple[str, float]] | None = None, streamed: str = "") -> None:
        """Answer with `text`; a streaming request first gets the part of it not yet sent
        (`streamed`: the pieces sent so far), so its pieces join to `text`."""
        piece = stream_piece(streamed, text, final=True) if request.stream else ""
        if piece:
            request.events.put(("token", piece))
        prediction = Prediction(text, request.adapter_name, request.bound_version, label,
                                scores or [], dict(request.timings), request.request_id)
        for stage in ("queue", "vision", "encode", "decode"):
            self.metrics.latency(request.task.name, stage,
                                 request.timings.get(f"{stage}_ms", 0.0) / 1000)
        self.metrics.latency(request.task.name, "total", time.monotonic() - request.enqueued)
        self._finish(request, prediction)

    def _finish(self, request: Request, outcome: Prediction | RequestError) -> None:
        """Answer a request once; drop its slot and its reference on the version."""
        if request.done:
            return
        request.done = True
        self._stop_waiting(request)
        if isinstance(outcome, RequestError):  # counted in metrics by the servicer
            request.events.put(("error", outcome))
        else:
            self.stats["completed"] += 1
            request.events.put(("done", outcome))
        self.adapters.release(request)

    def _fail_all_running(self, error: RequestError) -> None:
        for row in self._running:
            self._finish(row.owner, error)
        self._decoding.drop(list(self._running))


def _prompt_vectors(request: Request) -> int:
    """The prompt-tuning vectors the request's adapter set puts before its encoder input."""
    return request.adapter.serve[request.task.name].prompt_len()
