"""Dynamic batching: concurrent requests grouped into one forward pass, run off the event loop.

Every request becomes a `Job`: the items it brings (images, texts), a `key` saying which jobs can
share a forward pass (same method, same call options: labels, generation settings), and a
`run(items, options)` function of the loaded model. One collector task on the event loop takes
the oldest waiting job, gathers the waiting jobs with the same key until the batch holds
`max_batch` items or `max_wait_ms` has passed since the first one arrived, and hands the batch to
the one inference thread. While the thread works the queue fills, so under load the next batch
is full at once and nobody waits the `max_wait_ms` (the first request after an idle spell does).

A batch that fails (a bad text, a model's ValueError) is run again one job at a time, so one bad
request never fails its neighbours. The queue is bounded (`QueueFull` past `max_queue` jobs in
the building) and every job has a deadline (`asyncio.TimeoutError` in `submit`); a job whose
caller gave up before it started is skipped.
"""
from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """More jobs are waiting than `max_queue`; `retry_after` is a guess of seconds until room."""

    def __init__(self, retry_after: int):
        super().__init__(f"the server is busy (queue full); retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class Job:
    """One request's share of a batch.

    Args:
        key: jobs with equal keys share a forward pass (method and call options).
        items: the request's inputs, one per image / text (a batch is the jobs' items in a row).
        run: `run(items, options) -> one result per item`, called in the inference thread.
        options: keyword options of the call, the same for every job of the key.
    """

    key: Hashable
    items: list
    run: Callable[[list, dict], list]
    options: dict = field(default_factory=dict)
    future: asyncio.Future | None = None
    cancelled: bool = False
    enqueued: float = 0.0


class BatchStats:
    """What the batcher did: batches by size, items, jobs served and refused (for /info, /metrics)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.batch_sizes: collections.Counter = collections.Counter()  # items per forward pass -> count
        self.jobs_per_batch: collections.Counter = collections.Counter()
        self.batches = self.items = self.jobs = self.failed = self.rejected = self.timeouts = 0
        self.busy_s = 0.0

    def record(self, items: int, jobs: int, seconds: float) -> None:
        with self.lock:
            self.batches += 1
            self.items += items
            self.jobs += jobs
            self.busy_s += seconds
            self.batch_sizes[items] += 1
            self.jobs_per_batch[jobs] += 1

    def as_dict(self) -> dict:
        with self.lock:
            return {"batches": self.batches, "items": self.items, "jobs": self.jobs, "failed": self.failed,
                    "rejected_queue_full": self.rejected, "timeouts": self.timeouts,
                    "max_batch_seen": max(self.batch_sizes, default=0),
                    "mean_batch": round(self.items / self.batches, 3) if self.batches else 0.0,
                    "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                    "requests_per_batch": {str(k): v for k, v in sorted(self.jobs_per_batch.items())},
                    "inference_seconds": round(self.busy_s, 3)}


class Batcher:
    """Groups jobs into batches and runs them on one worker thread.

    Args:
        max_batch: most items (images or texts) in one forward pass; 1 turns batching off.
        max_wait_ms: longest a job waits for others to join its batch.
        max_queue: most jobs waiting or running; one more is refused with `QueueFull`.
    """

    def __init__(self, max_batch: int = 16, max_wait_ms: float = 10.0, max_queue: int = 256):
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.stats = BatchStats()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="polymodal-infer")
        self._waiting: collections.deque[Job] = collections.deque()
        self._in_flight = 0                     # jobs submitted and not finished
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the collector on the running event loop."""
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="polymodal-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=False, cancel_futures=True)

    def in_thread(self, fn: Callable, *args) -> "asyncio.Future":
        """Run `fn(*args)` on the inference thread (model loading, index building)."""
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @property
    def queued(self) -> int:
        return self._in_flight

    # ------------------------------------------------------------------------------- requests
    async def submit(self, job: Job, timeout_s: float) -> list:
        """Queue `job` and wait for its results (one per item).

        Raises:
            QueueFull: `max_queue` jobs are in the building already.
            asyncio.TimeoutError: no result within `timeout_s` (the job is dropped if not started).
            Whatever `job.run` raised for this job alone (a PolymodalError, a ValueError).
        """
        if self._in_flight >= self.max_queue:
            with self.stats.lock:
                self.stats.rejected += 1
            raise QueueFull(self._retry_after())
        job.future = asyncio.get_running_loop().create_future()
        job.enqueued = time.monotonic()
        self._in_flight += 1
        self._waiting.append(job)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), timeout_s)
        except asyncio.TimeoutError:
            job.cancelled = True                 # skipped if still waiting; its result dropped if running
            with self.stats.lock:
                self.stats.timeouts += 1
            raise
        except asyncio.CancelledError:           # the client went away: no forward pass for nobody
            job.cancelled = True
            raise
        finally:
            if job.future.done():
                self._release(job.future)
            else:  # still waiting or running: it leaves the building when it ends
                job.future.add_done_callback(self._release)

    def _release(self, future: asyncio.Future) -> None:
        self._in_flight -= 1
        if not future.cancelled():
            future.exception()  # retrieved: a late failure nobody waits for is not logged as lost

    def _retry_after(self) -> int:
        """Seconds until the queue has room, from the mean forward-pass time so far (at least 1)."""
        s = self.stats
        per_batch = s.busy_s / s.batches if s.batches else 1.0
        return max(1, int(round(per_batch * self._in_flight / max(1, self.max_batch))))

    # ------------------------------------------------------------------------------ collector
    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            first = self._waiting[0]
            deadline = first.enqueued + self.max_wait
            while self._size(first.key) < self.max_batch and (remaining := deadline - time.monotonic()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take(first.key)
            if batch:
                try:
                    await loop.run_in_executor(self.executor, self._run_batch, batch, loop)
                except Exception:  # noqa: BLE001  (the collector must outlive any batch)
                    log.exception("a batch of %d requests failed outside the model", len(batch))
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(RuntimeError("the batch could not be run"))

    def _size(self, key) -> int:
        return sum(len(j.items) for j in self._waiting if j.key == key and not j.cancelled)

    def _take(self, key) -> list[Job]:
        """The waiting jobs of `key`, oldest first, up to `max_batch` items (a job bigger than
        that runs alone; jobs are never split); cancelled jobs are dropped."""
        batch, n, keep = [], 0, collections.deque()
        while self._waiting:
            job = self._waiting.popleft()
            if job.cancelled:
                job.future.cancel()
                continue
            if job.key == key and (not batch or n + len(job.items) <= self.max_batch):
                batch.append(job)
                n += len(job.items)
            else:
                keep.append(job)
        self._waiting = keep
        return batch

    # ------------------------------------------------------------------------ inference thread
    def _run_batch(self, batch: list[Job], loop: asyncio.AbstractEventLoop) -> None:
        for job in batch:
            if job.cancelled:  # its caller gave up while it waited for the thread
                loop.call_soon_threadsafe(job.future.cancel)
        batch = [j for j in batch if not j.cancelled]
        if not batch:
            return
        items = [x for j in batch for x in j.items]
        start = time.monotonic()
        try:
            results = batch[0].run(items, batch[0].options)
            if len(results) != len(items):
                raise RuntimeError(f"{len(results)} results for {len(items)} items")
        except Exception as exc:  # noqa: BLE001  (reported to the jobs, never to the loop)
            if len(batch) == 1:
                self.stats.record(len(items), 1, time.monotonic() - start)
                return self._settle(loop, batch[0], exc=exc)
            # one bad request must not fail its neighbours: run each alone (each is counted then,
            # so `jobs` counts every request once)
            log.warning("a batch of %d requests failed (%s: %s); running each alone",
                        len(batch), type(exc).__name__, exc)
            for job in batch:
                self._run_batch([job], loop)
            return
        self.stats.record(len(items), len(batch), time.monotonic() - start)
        offset = 0
        for job in batch:
            self._settle(loop, job, results[offset:offset + len(job.items)])
            offset += len(job.items)

    def _settle(self, loop, job: Job, results: list | None = None, exc: BaseException | None = None) -> None:
        if exc is not None:
            with self.stats.lock:
                self.stats.failed += 1

        def settle():
            if job.future.done():
                return
            if exc is not None:
                job.future.set_exception(exc)
            else:
                job.future.set_result(results)

        loop.call_soon_threadsafe(settle)
