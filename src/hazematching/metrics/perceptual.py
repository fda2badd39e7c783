"""Realism and perceptual measures: LPIPS, FID (pretrained networks), FSIM and GMSD (piq).

Patches: LPIPS and FID see 64×64 patches. Each image is tiled into non-overlapping 64×64
patches from its top-left corner; the remainder at the right and bottom edges (less than one
patch) is left out. Grayscale patches are repeated to three channels.

Intensities: every image is mapped to [0, 1] before these measures, either by its own min and
max (``value_range=None``, the default: insensitive to the overall intensity scale, like
RI-PSNR) or by a fixed ``(low, high)`` range with values outside clipped. [0, 1] is then mapped
to what each network expects: LPIPS [-1, 1] (torchmetrics ``normalize=True``), FID uint8
0..255 (torchmetrics ``normalize=True``), piq's ``data_range=1``.

Weights: LPIPS needs torchvision's ImageNet AlexNet backbone (``alexnet-owt-7be5be79.pth``;
the small LPIPS linear heads ship inside torchmetrics) and FID needs torch-fidelity's
TF-Inception-v3 port (``weights-inception-2015-12-05-6726825d.pth``). Both libraries look in
torch's hub cache ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``)
and try to download what is missing. This module never downloads. It looks for the files in,
by priority: the ``weights_dir`` argument, the ``HAZEMATCHING_WEIGHTS_DIR`` environment
variable, then torch's hub checkpoint folder; a weights folder holds the files directly under
their exact names. Missing files raise :class:`MissingWeightsError` (naming the files, the
folder searched and the download URLs) before any library is called.

How the files reach the libraries: FID passes the file path to torchmetrics
(``feature_extractor_weights_path``). torchvision has no path option, so while the LPIPS
network is built, torch's hub folder is pointed (through ``TORCH_HOME``) at a temporary folder
whose ``checkpoints`` entry is a symbolic link to the weights folder; the previous setting is
restored afterwards. This is process-global state: do not build LPIPS scorers from several
threads at once.

Integrity: torchvision passes ``check_hash=True``, but torch.hub only verifies the hash (the
8 hex digits in the file name are a SHA-256 prefix) while downloading; a file already in place
is loaded as it is, and torch-fidelity loads its path with plain ``torch.load``. Both loads
unpickle (``weights_only=False``), so only use weight files from the URLs above.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

WEIGHTS_ENV = "HAZEMATCHING_WEIGHTS_DIR"
PATCH_SIZE = 64
_BATCH = 64  # patches per network call: bounds memory (Inception upsamples to 299×299)


class MetricUnavailableError(RuntimeError):
    """A metric cannot run here (missing weights, optional package or too-small images).

    The evaluation records the message as the reason and computes every other metric.
    """


class MissingWeightsError(MetricUnavailableError):
    """Pretrained weight files are absent and will not be downloaded.

    Attributes:
        missing: file name → public download URL, for every missing file.
        directory: the folder that was searched.
    """

    def __init__(self, missing: dict[str, str], directory: Path):
        self.missing = dict(missing)
        self.directory = Path(directory)
        lines = "\n".join(f"  {name}  ←  {url}" for name, url in self.missing.items())
        super().__init__(
            f"missing pretrained weight file(s) in {self.directory}:\n{lines}\n"
            f"Download each file from its URL into that folder (keep the exact file name), or "
            f"point the weights_dir option / ${WEIGHTS_ENV} at a folder that holds them.")


def _require(module: str, metric: str) -> None:
    try:
        __import__(module)
    except ImportError as err:
        raise MetricUnavailableError(
            f"{metric} needs the '{module}' package ({err}); install hazematching[metrics]"
        ) from None


def _file_of(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def lpips_weight_files() -> dict[str, str]:
    """``{file name: URL}`` of the backbone torchmetrics' LPIPS (AlexNet) loads."""
    _require("torchvision", "LPIPS")
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.DEFAULT.url  # what torchmetrics requests (weights=...DEFAULT)
    return {_file_of(url): url}


def fid_weight_files() -> dict[str, str]:
    """``{file name: URL}`` of torch-fidelity's Inception-v3 weights used by torchmetrics' FID."""
    _require("torch_fidelity", "FID")
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return {_file_of(URL_INCEPTION_V3): URL_INCEPTION_V3}


def weights_directory(weights_dir: str | Path | None = None) -> Path:
    """Folder searched for weight files: argument, else ``$HAZEMATCHING_WEIGHTS_DIR``, else
    torch's hub checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    if weights_dir is not None:
        return Path(weights_dir).expanduser()
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        return Path(env).expanduser()
    return Path(torch.hub.get_dir()) / "checkpoints"


def require_weights(files: dict[str, str], weights_dir: str | Path | None = None) -> Path:
    """Check that every file exists in the weights folder; return the folder.

    Args:
        files: ``{file name: download URL}``.
        weights_dir: explicit folder, or None for the default search (:func:`weights_directory`).

    Raises:
        MissingWeightsError: naming each missing file, the folder and the URLs.
    """
    directory = weights_directory(weights_dir)
    missing = {name: url for name, url in files.items() if not (directory / name).is_file()}
    if missing:
        raise MissingWeightsError(missing, directory)
    return directory


@contextlib.contextmanager
def _hub_checkpoints_at(directory: Path) -> Iterator[None]:
    """While the block runs, make torch.hub read checkpoints from `directory`."""
    if (Path(torch.hub.get_dir()) / "checkpoints").resolve() == directory.resolve():
        yield
        return
    with tempfile.TemporaryDirectory(prefix="hazematching-hub-") as tmp:
        hub = Path(tmp) / "hub"
        hub.mkdir()
        (hub / "checkpoints").symlink_to(directory.resolve(), target_is_directory=True)
        previous_home = os.environ.get("TORCH_HOME")
        previous_dir = torch.hub.get_dir()
        os.environ["TORCH_HOME"] = tmp
        # If someone called torch.hub.set_dir, TORCH_HOME is ignored: set the folder directly
        # and put the (already pinned) previous one back afterwards.
        pinned = Path(torch.hub.get_dir()) != hub
        if pinned:
            torch.hub.set_dir(str(hub))
        try:
            yield
        finally:
            if previous_home is None:
                os.environ.pop("TORCH_HOME", None)
            else:
                os.environ["TORCH_HOME"] = previous_home
            if pinned:
                torch.hub.set_dir(previous_dir)


def to_unit_range(images: np.ndarray,
                  value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Map images to [0, 1].

    Args:
        images: ``(..., Y, X)`` float images.
        value_range: None → each image by its own min and max (a constant image maps to 0);
            ``(low, high)`` → ``(x - low) / (high - low)`` clipped to [0, 1].

    Returns:
        float32 array of the same shape with values in [0, 1].
    """
    x = np.asarray(images, dtype=np.float32)
    if value_range is not None:
        lo, hi = (float(v) for v in value_range)
        if not hi > lo:
            raise ValueError(f"value_range must be (low, high) with high > low, got "
                             f"{value_range}")
        return np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    lo = x.min(axis=(-2, -1), keepdims=True)
    span = x.max(axis=(-2, -1), keepdims=True) - lo
    return np.divide(x - lo, span, out=np.zeros_like(x), where=span > 0)


def tile_patches(images: np.ndarray, size: int = PATCH_SIZE) -> np.ndarray:
    """Cut images into non-overlapping square patches from the top-left corner.

    Args:
        images: ``(..., Y, X)`` images with Y, X ≥ `size`.
        size: patch side in pixels.

    Returns:
        ``(..., P, size, size)`` with ``P = (Y // size) * (X // size)``, row-major patch order;
        edge remainders smaller than a patch are dropped.
    """
    x = np.asarray(images)
    ny, nx = x.shape[-2] // size, x.shape[-1] // size
    if ny == 0 or nx == 0:
        raise MetricUnavailableError(f"images of shape {x.shape[-2:]} are smaller than one "
                                     f"{size}×{size} patch")
    lead = x.shape[:-2]
    x = x[..., :ny * size, :nx * size].reshape(*lead, ny, size, nx, size)
    x = np.moveaxis(x, -3, -2)  # (..., ny, nx, size, size)
    return x.reshape(*lead, ny * nx, size, size)


def _rgb(patches: np.ndarray) -> torch.Tensor:
    """``(N, Y, X)`` in [0, 1] → ``(N, 3, Y, X)`` float32 tensor (gray repeated)."""
    # A copy: callers may pass read-only broadcast views, which torch must not alias.
    t = torch.from_numpy(np.array(patches, dtype=np.float32))[:, None]
    return t.expand(-1, 3, -1, -1)


class LPIPSScorer:
    """LPIPS (AlexNet, torchmetrics) between pairs of [0, 1] patches; lower = more similar."""

    def __init__(self, weights_dir: str | Path | None = None):
        """Build the network from local weights (see module docstring); never downloads.

        Raises:
            MissingWeightsError: the AlexNet backbone file is not in the weights folder.
            MetricUnavailableError: torchmetrics or torchvision is not installed.
        """
        _require("torchmetrics", "LPIPS")
        directory = require_weights(lpips_weight_files(), weights_dir)
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        with _hub_checkpoints_at(directory):
            self._metric = LearnedPerceptualImagePatchSimilarity(
                net_type="alex", reduction="none", normalize=True)

    @torch.inference_mode()
    def __call__(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        """Per-patch LPIPS.

        Args:
            pred: ``(N, Y, X)`` patches in [0, 1].
            target: ``(N, Y, X)`` matching patches in [0, 1].

        Returns:
            ``(N,)`` float64 distances ≥ 0 (0 for identical patches).
        """
        if pred.shape != target.shape or pred.ndim != 3:
            raise ValueError(f"LPIPS needs two (N, Y, X) patch stacks of one shape, got "
                             f"{pred.shape} and {target.shape}")
        self._metric.reset()
        for i in range(0, len(pred), _BATCH):
            self._metric.update(_rgb(pred[i:i + _BATCH]), _rgb(target[i:i + _BATCH]))
        return self._metric.compute().reshape(-1).double().numpy()


class FIDScorer:
    """FID (torchmetrics, 768-d Inception features) of patch sets against a fixed reference."""

    def __init__(self, reference: np.ndarray, weights_dir: str | Path | None = None):
        """Load Inception-v3 from local weights and embed the reference patches once.

        Args:
            reference: ``(N, Y, X)`` reference patches in [0, 1], N ≥ 2 (e.g. training target
                crops).
            weights_dir: folder with the weights (see module docstring).

        Raises:
            MissingWeightsError: the Inception file is not in the weights folder.
        """
        _require("torchmetrics", "FID")
        files = fid_weight_files()
        directory = require_weights(files, weights_dir)
        if len(reference) < 2:
            raise MetricUnavailableError(f"FID needs at least 2 reference patches, got "
                                         f"{len(reference)}")
        from torchmetrics.image.fid import FrechetInceptionDistance

        self._metric = FrechetInceptionDistance(
            feature=768, reset_real_features=False, normalize=True,
            feature_extractor_weights_path=str(directory / next(iter(files))))
        with torch.inference_mode():
            for i in range(0, len(reference), _BATCH):
                self._metric.update(_rgb(reference[i:i + _BATCH]), real=True)

    @torch.inference_mode()
    def __call__(self, patches: np.ndarray) -> float:
        """FID ≥ 0 of ``(N, Y, X)`` [0, 1] patches (N ≥ 2) against the reference."""
        if len(patches) < 2:
            raise MetricUnavailableError(f"FID needs at least 2 patches, got {len(patches)}")
        self._metric.reset()  # keeps the reference features (reset_real_features=False)
        for i in range(0, len(patches), _BATCH):
            self._metric.update(_rgb(patches[i:i + _BATCH]), real=False)
        return float(self._metric.compute())


def _piq_pair(preds: np.ndarray, target: np.ndarray,
              value_range: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    preds = np.asarray(preds).reshape(-1, *np.shape(target))
    x = torch.as_tensor(to_unit_range(preds, value_range))[:, None]
    y = torch.as_tensor(to_unit_range(np.asarray(target), value_range))[None, None]
    return x, y.expand_as(x)


@torch.inference_mode()
def fsim_batch(preds: np.ndarray, target: np.ndarray,
               value_range: tuple[float, float] | None = None) -> np.ndarray:
    """FSIM (piq, grayscale) of each prediction against one target.

    Args:
        preds: ``(B, Y, X)`` or ``(Y, X)`` float predictions.
        target: ``(Y, X)`` float target.
        value_range: see :func:`to_unit_range`.

    Returns:
        ``(B,)`` float64, usually in [0, 1]; higher = more similar.
    """
    _require("piq", "FSIM")
    import piq

    x, y = _piq_pair(preds, target, value_range)
    return piq.fsim(x, y, data_range=1.0, chromatic=False, reduction="none").double().numpy()


@torch.inference_mode()
def gmsd_batch(preds: np.ndarray, target: np.ndarray,
               value_range: tuple[float, float] | None = None) -> np.ndarray:
    """GMSD (piq) of each prediction against one target.

    Args:
        preds: ``(B, Y, X)`` or ``(Y, X)`` float predictions.
        target: ``(Y, X)`` float target.
        value_range: see :func:`to_unit_range`.

    Returns:
        ``(B,)`` float64 ≥ 0; 0 = identical gradient structure, higher = worse.
    """
    _require("piq", "GMSD")
    import piq

    x, y = _piq_pair(preds, target, value_range)
    return piq.gmsd(x, y, data_range=1.0, reduction="none").double().numpy()


def lpips(pred: np.ndarray, target: np.ndarray, *, weights_dir: str | Path | None = None,
          value_range: tuple[float, float] | None = None) -> float:
    """Mean LPIPS over the 64×64 patches of one 2-D image pair (≥ 64 px per side)."""
    scorer = LPIPSScorer(weights_dir)
    return float(np.mean(scorer(tile_patches(to_unit_range(pred, value_range)),
                                tile_patches(to_unit_range(target, value_range)))))


def fid(images: Sequence[np.ndarray], reference: Sequence[np.ndarray], *,
        weights_dir: str | Path | None = None,
        value_range: tuple[float, float] | None = None) -> float:
    """FID between the 64×64 patches of two sets of 2-D images (≥ 2 patches each)."""
    def patches(imgs: Sequence[np.ndarray]) -> np.ndarray:
        return np.concatenate([tile_patches(to_unit_range(im, value_range)) for im in imgs])

    return FIDScorer(patches(reference), weights_dir)(patches(images))


def fsim(pred: np.ndarray, target: np.ndarray,
         value_range: tuple[float, float] | None = None) -> float:
    """FSIM of one 2-D float pair (see :func:`fsim_batch`)."""
    return float(fsim_batch(pred, target, value_range)[0])


def gmsd(pred: np.ndarray, target: np.ndarray,
         value_range: tuple[float, float] | None = None) -> float:
    """GMSD of one 2-D float pair (see :func:`gmsd_batch`)."""
    return float(gmsd_batch(pred, target, value_range)[0])
