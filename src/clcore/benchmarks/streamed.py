"""Images streamed from disk: a data set too large for the memory budget, read batch by batch.

A source read through torchvision (``clcore.benchmarks.torchvision_sources``) whose uint8 images
exceed ``benchmark.memory_budget_gb`` is not loaded: its ``ImageData`` holds a ``StreamedImages``
per split instead of a tensor. It behaves like the uint8 tensor ``[N, C, H, W]`` it stands for
where the benchmark uses one: ``len``, ``shape``, ``dtype``, ``device``, indexing with a slice, an
index tensor or a boolean mask (a view: nothing is read), ``torch.cat`` of views, ``.cpu()`` /
``.to("cpu")`` (itself). So ``CLBenchmark`` splits it into tasks, train and validation exactly as
it splits a tensor, and ``TensorBatchLoader`` iterates the same index chunks in the same order;
only there are the pixels read, by a torch ``DataLoader`` whose workers each decode a batch
(``batches``). The batches are the same uint8 ``[B, C, H, W]`` tensors as the in-memory path's, so
the per-batch transform (``prepare_batch`` after the transfer) is unchanged.

Reading the pixels of a view explicitly: ``read`` (or ``contiguous``, ``numpy``, ``clone``, an
integer index). Holding streamed data on an accelerator (``benchmark.data_device``) is refused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

# At most this many worker processes read batches (more rarely help: decoding is not the step's cost).
MAX_WORKERS = 8

# Images per batch when a whole split (or a view) is read at once: ``read``, and the statistics.
READ_BATCH = 512


def default_workers() -> int:
    """``min(MAX_WORKERS, usable cores)``: the workers a streamed loader starts when not told."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(MAX_WORKERS, cores))


def image_to_uint8(image: Any, mode: str, size: tuple[int, int] | None) -> Tensor:
    """One image as a uint8 tensor ``[C, H, W]``: converted to the PIL ``mode`` (``"L"`` or
    ``"RGB"``) and, when ``size`` (height, width) is given, resized to it (PIL's bilinear filter,
    which averages over the source pixels when shrinking). A uint8 tensor or array is taken as it is.
    """
    from PIL import Image

    if isinstance(image, Image.Image):
        if image.mode != mode:
            image = image.convert(mode)
        if size is not None and image.size != (size[1], size[0]):
            image = image.resize((size[1], size[0]), Image.BILINEAR)
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    else:
        pixels = torch.as_tensor(np.asarray(image))
        if pixels.dtype != torch.uint8:
            raise ValueError(f"an image is {pixels.dtype}, not a PIL image or uint8 pixels")
        if pixels.dim() == 3 and pixels.shape[0] in (1, 3):
            return pixels.contiguous()
    # [H, W] grey or [H, W, C] colour -> [C, H, W]
    return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1).contiguous()


class SampleReader:
    """The images of a torchvision data set, one uint8 ``[C, H, W]`` tensor per index.

    ``dataset[index]`` is ``(image, label)``; the image is converted to ``mode`` and resized to
    ``size`` (``image_to_uint8``). Every image must come out as ``shape`` ``(C, H, W)``: one that
    does not (a data set of images of different sizes read without ``size``) raises ``ValueError``
    naming the index and the option that fixes it. Picklable with its data set, so DataLoader
    workers can read from it.
    """

    def __init__(
        self, name: str, dataset: Any, mode: str, size: tuple[int, int] | None, shape: tuple[int, int, int]
    ) -> None:
        self.name, self.dataset, self.mode, self.size, self.shape = name, dataset, mode, size, shape

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        pixels = image_to_uint8(self.dataset[index][0], self.mode, self.size)
        if tuple(pixels.shape) != self.shape:
            raise ValueError(
                f"{self.name}: image {index} is {_shape(pixels.shape)} but the first is {_shape(self.shape)} "
                f"(channels x height x width): the images differ in size; name the source with "
                f"/size:<S> (e.g. {self.name.split('/')[0]}/size:32) to resize them all at load time"
            )
        return pixels


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def _stack(images: list[Tensor]) -> Tensor:
    return torch.stack(images)


def read_batches(
    reader: SampleReader, batches: Iterable[Sequence[int]], num_workers: int | None = None
) -> Iterator[Tensor]:
    """The uint8 images ``[B, C, H, W]`` of each batch of reader indices, in order.

    ``num_workers`` processes read them (None: ``default_workers()``; 0: this process), each a
    whole batch at a time; the batches come back in the order given.
    """
    from torch.utils.data import DataLoader

    batches = [list(map(int, batch)) for batch in batches]
    workers = default_workers() if num_workers is None else num_workers
    workers = min(workers, len(batches))
    loader = DataLoader(
        reader,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_stack,
        persistent_workers=False,
    )
    yield from loader


class StreamedImages:
    """A view of the uint8 images ``[N, C, H, W]`` of a ``SampleReader``: its ``rows`` (reader
    indices), read only when a batch is asked for. See the module docstring for what it supports.
    """

    dtype = torch.uint8
    device = torch.device("cpu")
    ndim = 4

    def __init__(self, reader: SampleReader, rows: Tensor | None = None) -> None:
        self.reader = reader
        self.rows = torch.arange(len(reader)) if rows is None else rows.long().cpu()

    # ---- what a tensor would answer --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.reader.shape))

    def size(self, dim: int | None = None) -> torch.Size | int:
        return self.shape if dim is None else self.shape[dim]

    def dim(self) -> int:
        return 4

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape)

    def __repr__(self) -> str:
        return f"StreamedImages({self.reader.name}, {len(self)} images of {_shape(self.reader.shape)})"

    def __getitem__(self, key: Any) -> StreamedImages | Tensor:
        """An integer reads that image (``[C, H, W]``, as a tensor would give it); a slice, an index
        tensor or list, or a boolean mask gives a view."""
        if isinstance(key, int) or (
            isinstance(key, Tensor) and key.dim() == 0 and not key.is_floating_point()
        ):
            return self.reader[int(self.rows[int(key)])]
        if isinstance(key, (list, tuple)):
            key = torch.as_tensor(key)
        if isinstance(key, Tensor):
            key = key.cpu()
        return StreamedImages(self.reader, self.rows[key])

    def to(self, *args: Any, **kwargs: Any) -> StreamedImages:
        """Itself on the CPU (or with no device given); streamed data is never held on an accelerator."""
        device = kwargs.get("device", args[0] if args else None)
        if isinstance(device, torch.dtype) or kwargs.get("dtype") not in (None, torch.uint8):
            raise TypeError("streamed images are uint8: read them first (.read()), then convert")
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(
                f"{self.reader.name} is streamed from disk (larger than benchmark.memory_budget_gb), so it "
                f"cannot be held on {device}: unset benchmark.data_device, or raise benchmark.memory_budget_gb "
                f"to load it into memory"
            )
        return self

    def cpu(self) -> StreamedImages:
        return self

    # ---- reading the pixels ----------------------------------------------------------------------
    def read(self, num_workers: int | None = 0) -> Tensor:
        """All images of this view, read into one uint8 tensor ``[N, C, H, W]``."""
        out = torch.empty(self.shape, dtype=torch.uint8)
        position = 0
        for images in self.batches(self.rows.split(READ_BATCH), num_workers, positions=False):
            out[position : position + len(images)] = images
            position += len(images)
        return out

    def batches(
        self, chunks: Iterable[Tensor], num_workers: int | None = None, positions: bool = True
    ) -> Iterator[Tensor]:
        """The images of each chunk, in order: positions in this view (``positions``) or reader
        indices, read by ``num_workers`` DataLoader workers (``read_batches``)."""
        rows = (self.rows[chunk] for chunk in chunks) if positions else chunks
        return read_batches(self.reader, [row.tolist() for row in rows], num_workers)

    def contiguous(self) -> Tensor:
        return self.read()

    def clone(self) -> Tensor:
        return self.read()

    def numpy(self) -> np.ndarray:
        return self.read().numpy()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        """``torch.cat`` of views of one reader is a view of the concatenated rows; nothing else."""
        if func is torch.cat:
            parts = args[0] if args else (kwargs or {}).get("tensors")
            if all(isinstance(part, StreamedImages) for part in parts):
                readers = {id(part.reader) for part in parts}
                if len(readers) == 1 and ((kwargs or {}).get("dim", args[1] if len(args) > 1 else 0) == 0):
                    return StreamedImages(parts[0].reader, torch.cat([part.rows for part in parts]))
        names = ", ".join(sorted({t.__name__ for t in types}))
        raise TypeError(
            f"{getattr(func, '__name__', func)} is not supported on streamed images ({names}): read them "
            f"into a tensor first (.read())"
        )
