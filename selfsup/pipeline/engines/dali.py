"""The ``dali`` decode engine: NVIDIA DALI decodes, crops, resizes and flips.

It is a drop-in for :class:`CpuEngine` with ``output="uint8"``: ``load(indices, epoch)``
returns the uint8 views ``[V, B, S, S, 3]`` and each view's parameter rows ``[V, B, NPARAM]``;
the colour chain runs afterwards (``augment.augment_batch``). With ``device_id=None`` DALI
runs in its CPU-only mode (libjpeg-turbo, CPU resize) and the views are CPU tensors; with a
CUDA device number it decodes with nvJPEG (``mixed`` backend), resizes on the GPU, and the
views are delivered on that GPU.

DALI does the pixel work only. Everything that decides *which* pixels stays in selfsup:

- The samples are the indices passed to ``load`` (selfsup's sampler), fed to DALI as
  encoded bytes through ``fn.external_source``; no DALI reader, no ``random_shuffle``.
- Each sample's size comes from its JPEG header on the host, and each view's parameter row is
  drawn there with ``draw_params`` from ``sample_rng(seed, epoch, index, view)``, exactly as
  the cpu engine draws it. The crop box and flip reach DALI as per-sample ROI inputs of one
  ``fn.resize`` per view (a ROI whose start exceeds its end is mirrored, so the flip costs no
  extra pass). Each image is decoded once and every view is cut from that decode.
- Resizing matches the cpu engine's OpenCV call: bilinear or bicubic by the ViewSpec, and no
  antialiasing when shrinking (``antialias=False``; ``cv2.resize`` with ``INTER_LINEAR`` /
  ``INTER_CUBIC`` has none). DALI's cubic kernel and its sampling at the box edges differ a
  little from OpenCV's, so the pixels are close but not identical to the cpu engine's. A
  ViewSpec with ``antialias`` gets DALI's antialiased resize, which filters every shrink
  (the cpu engine area-averages only shrinks above 1.5x).

DALI gets only samples it is sure to decode the way ``decode_image`` would: baseline or
progressive JPEG bytes whose header parses, colour space YCbCr/Gray/RGB, no EXIF rotation
(read by ``decode.jpeg_orientation``, the parser ``decode_image`` uses), ending in an
EOI marker (a truncated file would otherwise abort the whole DALI batch), at most
``MAX_DALI_PIXELS`` pixels. Everything else (pixel
arrays, PNG and other formats, CMYK, unreadable or damaged files) takes the cpu engine's path,
so its decode, its replacement of bad samples by ``replacement_rng(seed, epoch, index)``, its
counting and its ``DataError`` past ``max_bad_fraction`` apply unchanged. If DALI still fails on
a batch (damage the host checks cannot see), the pipeline is rebuilt and that batch is done by
the cpu engine, which finds and replaces the bad sample. One difference remains: DALI decodes
a JPEG whose scan data is damaged (libjpeg-turbo warns "premature end of data segment" and
fills in grey) without an error, while the cpu engine's strict decode counts it as bad.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import simplejpeg
import torch

from selfsup.errors import ConfigError
from selfsup.kernels.layout import NPARAM, P_FLIP, P_H, P_W, P_X0, P_Y0
from selfsup.pipeline.decode import JPEG_MAGIC, jpeg_orientation
from selfsup.pipeline.engines.cpu import CpuEngine, EngineBatch
from selfsup.pipeline.params import draw_params
from selfsup.pipeline.rng import sample_rng
from selfsup.pipeline.sources.base import Source
from selfsup.pipeline.views import ViewSpec

INSTALL_HINT = "pip install 'selfsup[dali]' (the nvidia-dali-cuda120 wheel, also for CPU-only use)"
_DALI_COLORSPACES = ("YCbCr", "Gray", "RGB")
_EOI = b"\xff\xd9"
# Larger images (as the header declares them) go to the cpu path, which applies decode's own
# pixel limit: a decompression bomb must not make DALI allocate its decode buffers.
MAX_DALI_PIXELS = 100_000_000


def _import_dali():
    try:
        from nvidia import dali
        from nvidia.dali import fn, types
    except ImportError as e:
        raise ConfigError(
            f"data.engine=dali needs NVIDIA DALI, which is not installed ({e}); "
            f"install it with {INSTALL_HINT}, or use data.engine=cpu"
        ) from None
    return dali, fn, types


# -- host-side checks on encoded bytes ---------------------------------------------------


def dali_jpeg_size(payload) -> tuple[int, int] | None:
    """``(height, width)`` if DALI should decode ``payload``, else None (the cpu path takes it)."""
    if not isinstance(payload, bytes | bytearray | memoryview) or bytes(payload[:3]) != JPEG_MAGIC:
        return None
    data = bytes(payload)
    if data.rstrip(b"\0")[-2:] != _EOI:  # truncated (or trailing junk): let the cpu path judge
        return None
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    if colorspace not in _DALI_COLORSPACES or not 0 < h * w <= MAX_DALI_PIXELS:
        return None
    if jpeg_orientation(data) != 1:
        return None
    return h, w


# -- the engine ----------------------------------------------------------------------------


class DaliEngine:
    """DALI decode + crop + resize + flip; same interface as ``CpuEngine(output="uint8")``."""

    def __init__(
        self,
        source: Source,
        views: list[ViewSpec],
        *,
        seed: int = 0,
        threads: int = 0,
        max_bad_fraction: float = 0.01,
        device_id: int | None = None,
    ) -> None:
        self._dali, self._fn, self._types = _import_dali()
        self.source = source
        self.seed = seed
        self.threads = threads or os.cpu_count() or 1
        self.device_id = device_id
        self.device = torch.device("cpu") if device_id is None else torch.device("cuda", device_id)
        # The cpu engine does every sample DALI should not see, and owns the bad-sample logic.
        # It decodes at full resolution, as DALI does, so that all views of a batch are cut
        # from the same kind of decode.
        self._cpu = CpuEngine(
            source,
            views,
            seed=seed,
            threads=self.threads,
            max_bad_fraction=max_bad_fraction,
            output="uint8",
            reduced_decode=False,
        )
        self.groups = self._cpu.groups
        self.plan = self._cpu.plan
        self.max_bad_fraction = max_bad_fraction
        self.dali_failures = 0  # batches DALI failed on and the cpu engine redid
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="selfsup-dali-prep")
        self._pipe = None
        self._pipe_batch = 0

    @property
    def bad(self):
        return self._cpu.bad

    def close(self) -> None:
        self._pipe = None
        self._pool.shutdown(wait=True)
        self._cpu.close()

    # -- the DALI graph ------------------------------------------------------------------

    def _build(self, batch_size: int) -> None:
        dali, fn, types = self._dali, self._fn, self._types
        interp = {"bilinear": types.INTERP_LINEAR, "bicubic": types.INTERP_CUBIC}
        pipe = dali.Pipeline(
            batch_size=batch_size,
            num_threads=self.threads,
            device_id=self.device_id,
            # Synchronous: load() feeds a batch and takes its outputs at once; the Loader's
            # prefetch thread overlaps it with training.
            exec_async=False,
            exec_pipelined=False,
            prefetch_queue_depth=1,
        )
        with pipe:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            image = fn.decoders.image(
                encoded,
                device="cpu" if self.device_id is None else "mixed",
                output_type=types.RGB,
                adjust_orientation=False,  # images with EXIF rotation never reach DALI
                # nvJPEG defaults to plain chroma upsampling; libjpeg-turbo (the cpu engine)
                # uses fancy upsampling, which 4:2:0 JPEGs (most photos) make visible.
                jpeg_fancy_upsampling=True,
            )
            outputs = []
            for v, (_, _, spec) in enumerate(self.plan):
                start = fn.external_source(name=f"roi_start{v}", dtype=types.FLOAT, ndim=1)
                end = fn.external_source(name=f"roi_end{v}", dtype=types.FLOAT, ndim=1)
                outputs.append(
                    fn.resize(
                        image,
                        size=[spec.size, spec.size],
                        roi_start=start,
                        roi_end=end,
                        roi_relative=False,
                        interp_type=interp[spec.interpolation],
                        antialias=spec.antialias,
                    )
                )
            pipe.set_outputs(*outputs)
        pipe.build()
        self._pipe, self._pipe_batch = pipe, batch_size

    # -- one batch -----------------------------------------------------------------------

    def load(self, indices: np.ndarray, epoch: int) -> EngineBatch:
        indices = np.asarray(indices, dtype=np.int64)
        b = len(indices)
        views = [
            torch.empty((g.count, b, g.size, g.size, 3), dtype=torch.uint8, device=self.device)
            for g in self.groups
        ]
        params = [np.zeros((g.count, b, NPARAM), dtype=np.float32) for g in self.groups]
        labels = np.empty(b, dtype=np.int64)
        used = indices.copy()

        chunks = [c for c in np.array_split(np.arange(b), self.threads) if len(c)]
        preps = self._pool.map(lambda c: self._prepare(c, indices, epoch, params, labels), chunks)
        encoded: dict[int, np.ndarray] = {}
        for part in preps:
            encoded.update(part)
        on_dali = np.array(sorted(encoded), dtype=np.int64)
        if len(on_dali) and not self._run_dali(on_dali, encoded, params, views):
            on_dali = on_dali[:0]
        on_cpu = np.setdiff1d(np.arange(b), on_dali)
        if len(on_cpu):
            self._run_cpu(on_cpu, indices, epoch, views, params, labels, used)
        return EngineBatch(views, params, torch.from_numpy(labels), torch.from_numpy(used))

    def _prepare(self, positions, indices, epoch, params, labels) -> dict[int, np.ndarray]:
        """Read samples, keep those DALI should decode and draw their parameter rows."""
        encoded = {}
        for pos in positions:
            index = int(indices[pos])
            try:
                payload, label = self.source.read(index)
            except OSError:
                continue  # the cpu path reads it again, reports and replaces it
            size = dali_jpeg_size(payload)
            if size is None:
                continue
            h, w = size
            labels[pos] = label
            for v, (gi, slot, spec) in enumerate(self.plan):
                params[gi][slot, pos] = draw_params(
                    spec, sample_rng(self.seed, epoch, index, v), h, w
                )
            encoded[int(pos)] = np.frombuffer(payload, dtype=np.uint8)
        return encoded

    def _run_dali(self, positions, encoded, params, views) -> bool:
        """Decode and cut ``positions`` with DALI into ``views``; False if DALI failed."""
        n = len(positions)
        if self._pipe is None or n > self._pipe_batch:
            self._build(max(n, self._pipe_batch))
        inputs = {"encoded": [encoded[int(p)] for p in positions]}
        for v, (gi, slot, _) in enumerate(self.plan):
            rows = params[gi][slot, positions]
            y0, x0, h, w = rows[:, P_Y0], rows[:, P_X0], rows[:, P_H], rows[:, P_W]
            flip = rows[:, P_FLIP] != 0
            # A ROI with start > end is mirrored: the flip happens inside the resize.
            left, right = np.where(flip, x0 + w, x0), np.where(flip, x0, x0 + w)
            inputs[f"roi_start{v}"] = np.stack([y0, left], axis=1).astype(np.float32)
            inputs[f"roi_end{v}"] = np.stack([y0 + h, right], axis=1).astype(np.float32)
        try:
            outputs = self._pipe.run(**inputs)
        except RuntimeError:
            # A DALI error leaves the pipeline unusable: drop it, the cpu engine redoes the batch.
            self._pipe = None
            self.dali_failures += 1
            return False
        whole = n == views[0].shape[1]
        index = torch.from_numpy(positions).to(self.device)
        for v, (gi, slot, _) in enumerate(self.plan):
            dst = views[gi][slot] if whole else torch.empty_like(views[gi][slot, :n])
            self._copy_out(outputs[v], dst)
            if not whole:
                views[gi][slot].index_copy_(0, index, dst)
        if self.device_id is not None:
            # DALI reuses its output buffers on the next run: wait for the copies. The Loader
            # runs this in its prefetch thread with its own stream current, so this waits for
            # the loader's copies only, never for the training stream. (With DALI's dynamic
            # executor, run(cuda_stream=...) could order this without a wait.)
            torch.cuda.current_stream(self.device).synchronize()
        return True

    def _copy_out(self, tensor_list, dst: torch.Tensor) -> None:
        if self.device_id is None:
            dst.numpy()[...] = tensor_list.as_array()
        else:
            from nvidia.dali.plugin.pytorch import feed_ndarray

            # On torch's current stream (the Loader's own): ordered after dst's allocation and
            # before the event the training stream waits on.
            stream = torch.cuda.current_stream(self.device)
            feed_ndarray(tensor_list.as_tensor(), dst, cuda_stream=stream)

    def _run_cpu(self, positions, indices, epoch, views, params, labels, used) -> None:
        """The cpu engine's path for ``positions``: decode on the host, replace bad samples."""
        batch = self._cpu.load(indices[positions], epoch)
        index = torch.from_numpy(positions).to(self.device)
        for gi in range(len(self.groups)):
            views[gi].index_copy_(1, index, batch.views[gi].to(self.device))
            params[gi][:, positions] = batch.params[gi]
        labels[positions] = batch.labels.numpy()
        used[positions] = batch.indices.numpy()
