"""Test data builders shared by several test modules (importable as `helpers`)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from torch import nn
from torchcfm.models.unet.unet import UNetModel

from hazematching.data import datasets
from hazematching.data.datasets import DatasetPreset, SplitFolders
from hazematching.data.pairs import PairedImages
from hazematching.io import write_tiff

#: s, the posterior std of :class:`GaussianPosteriorVelocity`.
POSTERIOR_STD = 0.5


class GaussianPosteriorVelocity(nn.Module):
    """The exact flow-matching velocity v(t, [x, μ]) of a Gaussian posterior (μ: the condition
    channel).

    For x1 | y ~ N(μ(y), s²) and x0 ~ N(0, 1) on straight paths x_t = (1 − t)·x0 + t·x1, the
    optimum is linear in x: with a = 1 − t, b = t and d = a² + b²s²,
    v(t, x) = μ + (b·s² − a)/d · (x − b·μ). Its trajectories are x_t = t·μ + √d·x0 (the
    marginal's std at t is √d), so its flow maps x0 to μ + s·x0 (:meth:`flow` gives the map
    between any two times).
    """

    def forward(self, t, inp):
        x, mu = inp[:, :1], inp[:, 1:2]
        b = t.view(-1, 1, 1, 1).to(x.dtype)
        a = 1 - b
        s = POSTERIOR_STD
        return mu + (b * s**2 - a) / (a**2 + b**2 * s**2) * (x - b * mu)

    @staticmethod
    def flow(x, mu, t0, t1):
        """The exact solution at times `t1` (B,) of the state `x` (B, 1, H, W) at times `t0`."""
        t0, t1 = (t.view(-1, 1, 1, 1) for t in (t0, t1))

        def spread(t):
            return torch.sqrt((1 - t) ** 2 + (t * POSTERIOR_STD) ** 2)

        return t1 * mu + spread(t1) / spread(t0) * (x - t0 * mu)


#: The repository's benchmark scripts (not a package: loaded by path).
BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def load_benchmark(name: str) -> object:
    """Import ``benchmarks/<name>.py`` as a module, e.g. ``load_benchmark("bench_cpu_batch")``."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while it is executed
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def read_only(folder: Path):
    """`folder` refuses new entries for the block: mode 0o555, or for root (whom modes do not
    stop) the immutable attribute (``chattr +i``); the test is skipped where neither works."""
    folder.chmod(0o555)
    immutable = False
    try:
        (folder / ".probe").touch()
    except PermissionError:
        pass
    else:
        (folder / ".probe").unlink()
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
            folder.chmod(0o755)
            pytest.skip("cannot make a folder read-only here (root without chattr)")
        immutable = True
    try:
        yield folder
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
        folder.chmod(0o755)


def make_pairs(n: int, size: int = 48, seed: int = 0) -> PairedImages:
    """Blobs (target) and a hazy, noisy, offset version (input), raw uint16-like ranges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    targets, inputs = [], []
    for _ in range(n):
        t = np.zeros((size, size), np.float32)
        for _ in range(6):
            cy, cx = rng.uniform(0, size, 2)
            t += 800 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)
        haze = 300 + 0.5 * t.mean() + 0.3 * t
        x = haze + rng.normal(0, 10, t.shape)
        targets.append(t[None] + 100)
        inputs.append(x[None, None].astype(np.float32))
    return PairedImages([f"img{i}" for i in range(n)], targets, inputs)


def write_paper_layout(folder: Path, pairs: PairedImages) -> Path:
    """One CYX uint16 TIFF per sample: channel 0 target, channel 1 input."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, t, x in zip(pairs.names, pairs.targets, pairs.inputs, strict=True):
        cyx = np.stack([t[0], x[0, 0]]).clip(0, 65535).astype(np.uint16)
        write_tiff(folder / f"{name}.tif", cyx, "CYX")
    return folder


# --- Loopback HTTP, archives, checkpoints and presets for the download/publish tests ----------
# (tests/data/test_download.py keeps its own richer server: Range requests, cut connections.)

PAPER_FOLDERS = ("train_crop", "val_crop", "val", "test", "train_crops_fid")


class StaticServer:
    """A static HTTP server on 127.0.0.1 while used as a context manager: files under `root`
    (created on entry), every GET's request path appended to `requests`, base address in `url`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = ""
        self.requests: list[str] = []
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def put(self, path: str, data: bytes) -> None:
        """Serve `data` at URL path `path` (folders created as needed)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def __enter__(self) -> StaticServer:
        self.root.mkdir(parents=True, exist_ok=True)
        served = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(served.root), **kwargs)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                served.requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._httpd is not None and self._thread is not None
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def paper_zip(folders: tuple[str, ...] = PAPER_FOLDERS, wrap: str | None = None,
              file_name: str = "sample.tif", image: np.ndarray | None = None) -> bytes:
    """A dataset archive in the published layout: one 2-channel (confocal, widefield) CYX TIFF
    `file_name` per folder, under `wrap/` if given; `image` (2, Y, X) uint16, or random 16x16."""
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(buffer, "w") as zf:
        for folder in folders:
            cyx = rng.integers(0, 4000, (2, 16, 16), dtype=np.uint16) if image is None else image
            tif = io.BytesIO()
            tifffile.imwrite(tif, cyx, imagej=True, metadata={"axes": "CYX"})
            zf.writestr("/".join(p for p in (wrap, folder, file_name) if p), tif.getvalue())
    return buffer.getvalue()


def torchcfm_unet(random_weights: bool = True) -> UNetModel:
    """torchcfm's UNetModel in the published configuration at 64 px / channel_mult (1, 2, 3, 4),
    seeded; with `random_weights` every weight is random (torchcfm zero-initialises some layers,
    which would make a comparison vacuous)."""
    torch.manual_seed(0)
    net = UNetModel(image_size=64, in_channels=2, model_channels=32, out_channels=1,
                    num_res_blocks=1, attention_resolutions=(64 // 16,), dropout=0.0,
                    channel_mult=(1, 2, 3, 4), num_heads=1, num_head_channels=-1,
                    use_scale_shift_norm=False, resblock_updown=False)
    if random_weights:
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0.0, 0.05)
            for m in net.modules():
                if isinstance(m, torch.nn.GroupNorm):
                    m.weight.normal_(1.0, 0.05)
    return net.eval()


def checkpoint_bytes(obj: object) -> bytes:
    """What torch.save writes for `obj`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def neuron_preset(name: str, **fields: object) -> DatasetPreset:
    """A neuron-sized preset (64 px tiles keeping 32, channel_mult (1, 2, 3, 4), train/val/test
    folders); `fields` gives the rest (sha256, stats, ...)."""
    return DatasetPreset(name=name, patch_size=64, tile_size=64, tile_keep=32,
                         channel_mult=(1, 2, 3, 4),
                         folders=SplitFolders(train="train", val="val", test="test",
                                              fid_reference="train"), **fields)


def use_preset(monkeypatch: pytest.MonkeyPatch, preset: DatasetPreset) -> DatasetPreset:
    """Register `preset` for the duration of the test."""
    monkeypatch.setitem(datasets.PRESETS, preset.name, preset)
    return preset
