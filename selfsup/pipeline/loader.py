"""`Loader`: the drop-in data loader for any PyTorch loop.

    loader = Loader(source, "simclr", batch_size=256, device="cuda", seed=0)
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            views, labels, indices = batch.views, batch.labels, batch.indices

``batch.views`` holds one tensor per view size, ``[V, B, 3, S, S]``, normalised, of the
chosen dtype, on the device; ``flatten(0, 1)`` gives ``[V*B, 3, S, S]`` (channels_last
strides when asked for). Batches depend only on (seed, epoch, batch number), never on
the thread count or on where iteration was interrupted, so ``state_dict()`` /
``load_state_dict()`` resume exactly mid-epoch.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from selfsup import distributed
from selfsup.errors import ConfigError, DataError
from selfsup.pipeline.augment_device import augment_batch
from selfsup.pipeline.device_clock import DeviceClock
from selfsup.pipeline.engines.cpu import (
    BadSample,
    CpuEngine,
    EngineBatch,
    HostAugment,
    source_has_masks,
)
from selfsup.pipeline.recipes import recipe as make_recipe
from selfsup.pipeline.sampler import ShardedSampler
from selfsup.pipeline.sources.base import Source
from selfsup.pipeline.views import ViewSpec


@dataclass
class Batch:
    views: list[torch.Tensor]
    labels: torch.Tensor
    indices: torch.Tensor


ENGINES = ("auto", "cpu", "dali")


def dali_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("nvidia.dali") is not None


def resolve_engine(engine: str, device: torch.device, stored_masks: bool = False) -> str:
    """The engine ``auto`` stands for on ``device``: dali on CUDA when installed, else cpu.

    ``stored_masks``: views mask with the source's precomputed saliency masks, which only
    the cpu engine cuts; ``auto`` then means cpu, and an explicit dali is refused.
    """
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if stored_masks and engine == "dali":
        raise ConfigError(
            "the dali engine cannot cut the source's precomputed saliency masks; "
            "use engine 'cpu' (or 'auto'), or views without mask_p"
        )
    if engine == "auto":
        dali = device.type == "cuda" and not stored_masks and dali_installed()
        return "dali" if dali else "cpu"
    return engine


class Loader:
    """Batches of augmented views from a source; see the module docstring.

    Args:
        source: random access to ``(bytes, label)`` samples.
        recipe: a recipe name (``simclr``, ``supervised``, ``center_crop_eval``) or a list
            of :class:`ViewSpec`.
        batch_size: samples per batch on this rank.
        device: where batches are delivered. On CUDA the colour chain runs batched on the
            device from uint8; elsewhere it runs fused per sample in the engine's threads.
        seed: keys the permutation and every random augmentation choice.
        size: rescale the recipe so its largest view has this side.
        view_overrides: ViewSpec fields replaced in every view (e.g. ``{"blur_p": 0}``).
        small_crops: a named multi-crop recipe's number of small views (None: the recipe's).
        dtype, channels_last: the views' dtype and memory format.
        shuffle, drop_last: as in torch's DataLoader; drop_last keeps batch shapes fixed.
        threads: engine threads (0: one per core).
        prefetch: batches prepared ahead in a background thread (0: none).
        rank, world_size: default to torch.distributed's when initialised.
        max_bad_fraction: above this fraction of undecodable samples, raise DataError.
        augment_on_device: run the colour chain batched on ``device`` from uint8 crops
            (default: on CUDA devices) instead of fused per sample in the engine threads.
        engine: ``cpu`` (libjpeg-turbo over a thread pool), ``dali`` (nvJPEG on the GPU of
            a CUDA ``device``, DALI's CPU-only mode otherwise) or ``auto`` (dali on CUDA
            devices when nvidia-dali is installed, cpu otherwise).
        reduced_decode: cpu engine: decode JPEGs at the smallest 1/2, 1/4 or 1/8 DCT scale
            that leaves every crop at least its view's size (faster; False: always full).
        stage_timing: cpu engine: sum the time each sample spends reading, decoding,
            cropping and augmenting into ``stage_clock``; any engine: time the host-to-device
            copy and the batched device augmentation into ``device_clock`` (``selfsup
            profile``).
    """

    def __init__(
        self,
        source: Source,
        recipe: str | list[ViewSpec] = "simclr",
        batch_size: int = 256,
        device: str | torch.device = "cpu",
        seed: int = 0,
        *,
        size: int | None = None,
        view_overrides: dict | None = None,
        small_crops: int | None = None,
        dtype: torch.dtype = torch.float32,
        channels_last: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        threads: int = 0,
        prefetch: int = 2,
        rank: int | None = None,
        world_size: int | None = None,
        max_bad_fraction: float = 0.01,
        augment_on_device: bool | None = None,
        engine: str = "auto",
        reduced_decode: bool = True,
        stage_timing: bool = False,
    ) -> None:
        if isinstance(recipe, str):
            views = make_recipe(recipe, size, view_overrides, small_crops)
        else:
            views = list(recipe)
        rank = distributed.rank() if rank is None else rank
        world_size = distributed.world_size() if world_size is None else world_size
        self.source = source
        self.views = views
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            # "cuda" means the current device (torchrun ranks set it); DALI needs the number
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = dtype
        self.channels_last = channels_last
        # the loader's own CUDA stream (made on first use): batches reach the device without
        # the training stream
        self._stream: torch.cuda.Stream | None = None
        self.device_clock = DeviceClock(self.device.type == "cuda") if stage_timing else None
        self.prefetch = prefetch
        self.seed = seed
        self.device_augment = (
            self.device.type == "cuda" if augment_on_device is None else augment_on_device
        )
        stored_masks = source_has_masks(source) and any(v.mask_p > 0 for v in views)
        self.engine_name = resolve_engine(engine, self.device, stored_masks)
        if self.engine_name == "dali":
            from selfsup.pipeline.engines.dali import DaliEngine

            cuda = self.device.type == "cuda"
            self.engine = DaliEngine(
                source,
                views,
                seed=seed,
                threads=threads,
                max_bad_fraction=max_bad_fraction,
                device_id=self.device.index if cuda else None,
            )
            # The colour chain of DALI's uint8 crops runs on the host when not on a device.
            self._host_augment = None if self.device_augment else HostAugment(views, threads)
        else:
            self.engine = CpuEngine(
                source,
                views,
                seed=seed,
                threads=threads,
                max_bad_fraction=max_bad_fraction,
                output="uint8" if self.device_augment else "fused",
                reduced_decode=reduced_decode,
                stage_timing=stage_timing,
            )
            self._host_augment = None
        self.sampler = ShardedSampler(
            len(source),
            batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle=shuffle,
            drop_last=drop_last,
        )
        if len(self.sampler) == 0:
            raise DataError(
                f"the dataset has {len(source)} samples, fewer than one global batch of "
                f"{self.sampler.global_batch_size}; lower the batch size or add data"
            )
        self.epoch = 0
        self._next = 0  # batches of this epoch already handed out

    # -- the public API ------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def stage_clock(self):
        """The cpu engine's per-stage times (a ``StageClock``) with ``stage_timing``; else
        None."""
        return getattr(self.engine, "clock", None)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch to iterate; a new epoch starts at its first batch."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._next = 0

    @property
    def bad_samples(self) -> list[BadSample]:
        """Samples replaced so far because they could not be read or decoded."""
        return list(self.engine.bad.values())

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch": self._next,
            "seed": self.seed,
            "global_batch_size": self.sampler.global_batch_size,
            "num_samples": len(self.source),
        }

    def load_state_dict(self, state: dict) -> None:
        for key, mine in (
            ("seed", self.seed),
            ("global_batch_size", self.sampler.global_batch_size),
            ("num_samples", len(self.source)),
        ):
            if state[key] != mine:
                raise DataError(
                    f"cannot resume the loader: saved {key}={state[key]} but this loader has "
                    f"{key}={mine}; resume with the same data, seed and global batch size"
                )
        self.epoch = int(state["epoch"])
        self._next = int(state["batch"])

    def close(self) -> None:
        self.engine.close()
        if self._host_augment is not None:
            self._host_augment.close()

    def __iter__(self) -> Iterator[Batch]:
        order = self.sampler.order(self.epoch)
        epoch, start = self.epoch, self._next
        batches = (self.sampler.batch(order, k) for k in range(start, len(self)))
        clock = self.stage_clock
        for raw in self._produce(batches, epoch):
            self._next += 1
            if clock is None:
                yield self._deliver(raw)
                continue
            start = time.perf_counter()
            on_device = self.device_clock.host_seconds
            batch = self._deliver(raw)
            # the hand-over is batching, less a CPU device's batched augmentation (its own stage)
            on_device = self.device_clock.host_seconds - on_device
            clock.add_collate(time.perf_counter() - start - on_device, start)
            yield batch
        self._next = 0

    # -- internals -----------------------------------------------------------------------

    def _produce(self, batches, epoch: int) -> Iterator[EngineBatch]:
        """Engine batches in order, made ``prefetch`` ahead in a background thread."""
        if self.prefetch == 0:
            for idx in batches:
                yield self._load(idx, epoch)
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    pass
            return False

        def run() -> None:
            if self.device.type == "cuda":
                # this thread's current device: else leaving the stream context would switch
                # it to cuda:0 and create a context there on every rank
                torch.cuda.set_device(self.device)
            try:
                for idx in batches:
                    if stop.is_set() or not put(self._load(idx, epoch)):
                        return
                put(done)
            except BaseException as e:  # handed to the consumer, raised there
                put(e)

        worker = threading.Thread(target=run, name="selfsup-loader", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join()

    def _load(self, idx, epoch: int) -> EngineBatch:
        """Make one batch (in the prefetch thread). On CUDA the engine's device work (DALI's
        decode and copies) and the host-to-device copies run on the loader's own stream, from
        pinned memory; ``raw.ready`` is an event the training stream waits on, so neither
        stream waits for the other on the host."""
        if self.device.type != "cuda":
            return self.engine.load(idx, epoch)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(self._stream):
            raw = self.engine.load(idx, epoch)
            if self._host_augment is not None:
                # DALI's crops, coloured on the host: their copy back waits on this stream only
                raw = self._host_augment(raw)

            def to_device(t):
                if t is None or t.is_cuda:
                    return t
                return t.pin_memory().to(self.device, non_blocking=True)

            views = raw.views
            if not self.device_augment and self.channels_last:
                # [V,B,3,S,S] whose flatten(0,1) has NHWC strides
                views = [
                    v.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3) for v in views
                ]
            dclock = self.device_clock
            mark = None if dclock is None else dclock.start()
            staged = EngineBatch(
                [to_device(v) for v in views],
                # parameter rows too: a copy from pageable memory would sync the stream
                None
                if raw.params is None
                else [to_device(torch.from_numpy(p)) for p in raw.params],
                to_device(raw.labels),
                to_device(raw.indices),
                None if raw.masks is None else [to_device(m) for m in raw.masks],
            )
            if dclock is not None:
                dclock.stop("h2d", mark, len(raw.labels))
            staged.ready = torch.cuda.Event()
            staged.ready.record(self._stream)
        return staged

    @staticmethod
    def _handed_over(raw: EngineBatch, stream) -> None:
        """The training stream waits for the loader stream's work on ``raw``, and the caching
        allocator learns that ``raw``'s tensors (allocated on the loader stream) are used on
        the training stream, so their memory is not reused before it is done with them."""
        stream.wait_event(raw.ready)
        for t in [*raw.views, *(raw.params or []), raw.labels, raw.indices, *(raw.masks or [])]:
            if t is not None and t.is_cuda:
                t.record_stream(stream)

    def _deliver(self, raw: EngineBatch) -> Batch:
        dev, cuda = self.device, self.device.type == "cuda"
        if raw.ready is not None:
            self._handed_over(raw, torch.cuda.current_stream(dev))
        elif self._host_augment is not None:
            raw = self._host_augment(raw)
        if self.device_augment:
            dclock = self.device_clock
            mark = None if dclock is None else dclock.start()
            views = []
            masks = raw.masks or [None] * len(raw.views)
            for group, u8, params, m in zip(
                self.engine.groups, raw.views, raw.params, masks, strict=True
            ):
                u8 = u8.to(dev, non_blocking=True)
                if not isinstance(params, torch.Tensor):  # staged on the loader stream on CUDA
                    params = torch.from_numpy(params)
                p = params.to(dev, non_blocking=True)
                m = None if m is None else m.to(dev, non_blocking=True)
                out, slot = [], 0
                for spec in group.specs:
                    x = u8[slot : slot + spec.count].flatten(0, 1).permute(0, 3, 1, 2)
                    y = augment_batch(
                        x,
                        p[slot : slot + spec.count].flatten(0, 1),
                        spec,
                        self.dtype,
                        self.channels_last,
                        masks=None if m is None else m[slot : slot + spec.count].flatten(0, 1),
                    )
                    out.append(y.unflatten(0, (spec.count, -1)))
                    slot += spec.count
                if len(out) == 1:
                    views.append(out[0])
                elif self.channels_last:
                    # torch.cat of 5-D tensors would drop the NHWC strides of each view
                    nhwc = torch.cat([o.permute(0, 1, 3, 4, 2) for o in out])
                    views.append(nhwc.permute(0, 1, 4, 2, 3))
                else:
                    views.append(torch.cat(out))
            if dclock is not None:
                dclock.stop("device_augment", mark, len(raw.labels))
        else:
            views = []
            for v in raw.views:
                if self.channels_last and not v.is_cuda:
                    # [V,B,3,S,S] whose flatten(0,1) has NHWC strides.
                    v = v.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
                views.append(v.to(dev, self.dtype, non_blocking=cuda))
        # non_blocking: a blocking host-to-device copy would wait for the training stream
        labels = raw.labels.to(dev, non_blocking=cuda)
        return Batch(views, labels, raw.indices.to(dev, non_blocking=cuda))
