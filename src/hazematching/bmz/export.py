"""Export a trained model as a BioImage Model Zoo package (``bioimageio.spec`` model format 0.5).

The package holds:

* ``weights.pt`` — a ``pytorch_state_dict`` of :class:`~hazematching.bmz.network.BMZNetwork`,
  whose architecture source ``hazematching_bmz.py`` is bundled from our own modules (see
  :mod:`hazematching.bmz.bundle`), so the package runs with torch, numpy and pydantic alone;
* pre-processing that maps raw input intensities to the model's normalisation
  (``scale_linear`` with the training statistics stored in ``model.json``) and post-processing
  back to target intensity units: MMSE = mean·scale + offset, std = σ_cal·scale. The network
  itself applies the model's calibration (σ_cal = a·σ + b, or the monotone curve of
  :mod:`hazematching.calibration`, which no bioimage.io post-processing step can express);
* a test input and the outputs the package must reproduce from it (``.npy``), a cover made from
  that prediction, a README, authors, licence and the paper's citation;
* the model's own config, normalisation and calibration under ``config.hazematching``, from
  which :func:`hazematching.bmz.load_bmz` rebuilds the model exactly.

Only HTTP(S) URLs make the validator reach the internet (it sends a HEAD request to check each),
as does a ``github_user`` of an author (a GitHub API call): the package has neither, and the
citation is a DOI, which is checked against a pattern only.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile
import torch
from pydantic import ValidationError

from hazematching.bmz.bundle import BMZ_BUNDLE, bundle_source
from hazematching.bmz.docs import PAPER_AUTHORS, PAPER_CITATION, PAPER_DOI, cover_image, readme_text
from hazematching.bmz.network import BMZ_METHODS, BMZNetwork
from hazematching.data.normalization import Normalizer
from hazematching.io import atomic_path, to_planes
from hazematching.nets.unet import UNet

if TYPE_CHECKING:
    from hazematching.api import Model

#: Marks a package written here; :func:`hazematching.bmz.load_bmz` refuses newer versions.
BMZ_FORMAT, BMZ_FORMAT_VERSION = "hazematching-bmz", 1
ARCHITECTURE_FILE, WEIGHTS_FILE = "hazematching_bmz.py", "weights.pt"


class UncalibratedExportWarning(UserWarning):
    """The exported std is the raw posterior spread: the model was never calibrated."""


@dataclass
class BMZExport:
    """What :func:`export_bmz` wrote.

    Attributes:
        path: the package (.zip).
        outputs: the package's output tensors, ('mmse', 'std') or ('mmse',).
        notes: sentences on what the package holds (uncalibrated std, MMSE only, …), also in
            its README.
    """

    path: Path
    outputs: tuple[str, ...]
    notes: list[str]


def unet_of(method: torch.nn.Module) -> tuple[str, UNet]:
    """The one U-Net of a method and its attribute path, e.g. ('net', …) or ('net.unet', …).

    Raises:
        ValueError: the method has no U-Net or several.
    """
    found = [(name, m) for name, m in method.named_modules() if isinstance(m, UNet)]
    if len(found) != 1:
        raise ValueError(f"expected one U-Net in the method, found {len(found)}")
    return found[0]


def network_kwargs(model: Model, n_samples: int | None = None) -> dict[str, Any]:
    """:class:`BMZNetwork` arguments for `model`: its method, network and sampling config.

    Raises:
        ValueError: a method without a BMZ prediction rule, or fewer than 2 samples.
    """
    cfg = model.config
    if cfg.method not in BMZ_METHODS:
        raise ValueError(f"BMZ export supports the methods {', '.join(BMZ_METHODS)}; this model "
                         f"uses {cfg.method!r}")
    s = cfg.sampling
    kwargs: dict[str, Any] = {"method": cfg.method, "in_channels": cfg.in_channels,
                              "network": cfg.network.model_dump(mode="json")}
    if model.method.stochastic:
        k = n_samples or s.n_samples
        if k < 2:
            raise ValueError(f"n_samples={k}: the package's std needs at least 2 posterior "
                             f"samples per block")
        kwargs |= {"solver": s.solver, "n_time_points": s.n_time_points,
                   "schedule": s.schedule, "n_samples": k, "mmse": s.mmse, "std": s.std,
                   "antithetic": s.antithetic, "std_smoothing": s.std_smoothing,
                   "batch_size": s.batch_size, "seed": 0 if s.seed is None else s.seed,
                   "calibration": None if model.calibration is None else {
                       k: v for k, v in model.calibration.to_dict().items()
                       if k != "fitted_for"}}
    return kwargs


def build_network(model: Model, kwargs: dict[str, Any]) -> BMZNetwork:
    """A :class:`BMZNetwork` carrying `model`'s trained U-Net weights (CPU, eval mode)."""
    net = BMZNetwork(**kwargs)
    net.net.load_state_dict(unet_of(model.method)[1].state_dict())
    return net.eval()


def example_input(model: Model, image: np.ndarray | None, axes: str | None,
                  channels: Sequence[int] | None = None) -> np.ndarray:
    """The package's test input: a raw (1, C, T, T) float32 block, T = sampling.tile_size.

    Args:
        image: raw widefield image (any real dtype) whose dimensions `axes` names (default
            'YX', or 'CYX' for several input channels); its first plane is centre-cropped.
        channels: indices along its C axis to use (default: every channel).
            None: a simulated widefield image (:func:`hazematching.data.synthetic.simulate_pairs`)
            mapped onto the model's input statistics.
    """
    t = model.config.sampling.tile_size
    norm = _normalizer(model)
    if image is None:
        if model.config.in_channels != 1:
            raise ValueError(f"the model has {model.config.in_channels} input channels: pass a "
                             f"test image (CLI: --image)")
        from hazematching.data.synthetic import simulate_pairs

        wf = simulate_pairs(1, size=t, seed=0)[1][:, None]
        own = Normalizer.fit([wf[:, 0]], [wf], norm.kind, norm.percentiles)
        z = own.normalize_input(wf)
        return (z * norm.inputs[0].scale + norm.inputs[0].offset).astype(np.float32)
    axes = (axes or ("YX" if model.config.in_channels == 1 else "CYX")).upper()
    planes = to_planes(np.asarray(image), axes)[:1]
    if channels is not None:
        if "C" not in axes or any(not 0 <= c < planes.shape[1] for c in channels):
            raise ValueError(f"channels {list(channels)} do not exist in the test image (axes "
                             f"{axes}, {planes.shape[1]} channel(s))")
        planes = planes[:, list(channels)]
    if planes.shape[1] != model.config.in_channels:
        raise ValueError(f"the test image has {planes.shape[1]} channel(s), the model expects "
                         f"{model.config.in_channels}")
    h, w = planes.shape[2:]
    if h < t or w < t:
        raise ValueError(f"the test image is {h}×{w} px; it must be at least the model's tile "
                         f"size {t}×{t} (sampling.tile_size)")
    y, x = (h - t) // 2, (w - t) // 2
    return np.ascontiguousarray(planes[:, :, y:y + t, x:x + t], dtype=np.float32)


def export_bmz(model: Model | str | Path, out: str | Path, *, image: np.ndarray | None = None,
               axes: str | None = None, channels: Sequence[int] | None = None,
               n_samples: int | None = None,
               authors: Sequence[str] | None = None, name: str | None = None,
               overwrite: bool = False) -> BMZExport:
    """Write `model` as a BioImage Model Zoo package (.zip).

    Args:
        model: a trained :class:`~hazematching.Model` or its directory / .zip archive.
        out: the package to write; never replaced unless `overwrite`.
        image, axes, channels: the test input (see :func:`example_input`); its prediction
            makes the cover.
        n_samples: posterior samples per block (default: the model's ``sampling.n_samples``).
            Each costs ``network_calls`` U-Net evaluations per block, so keep it small.
        authors: the model's authors (default: the authors of the HazeMatching paper).
        name: the package's name (letters, digits, spaces, ``_+-()``; 5–128 characters).

    Warns:
        UncalibratedExportWarning: a stochastic model without calibration.

    Raises:
        ValueError: an unsupported method, an untrained model, a test image that does not fit.
        FileExistsError: `out` exists and not `overwrite`.
        ImportError: bioimageio.spec is not installed.
    """
    from hazematching.api import Model, load_model

    spec = _import_spec()
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) or choose "
                              f"another name")
    if not isinstance(model, Model):
        model = load_model(model)
    norm = _normalizer(model)
    kwargs = network_kwargs(model, n_samples)
    stochastic = model.method.stochastic
    notes = _notes(model, kwargs)
    if stochastic and model.calibration is None:
        warnings.warn(notes[0], UncalibratedExportWarning, stacklevel=2)
    net = build_network(model, kwargs)
    block = example_input(model, image, axes, channels)
    with torch.no_grad():
        raw = net(torch.from_numpy(norm.normalize_input(block)))
    mean, std = raw if stochastic else (raw, None)
    mmse = norm.denormalize_target(mean.numpy())
    if std is not None:  # calibrated inside the network (kwargs["calibration"])
        std = std.numpy() * np.float32(norm.target.scale)
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_files(Path(tmp), model, net, block, mmse, std, notes, kwargs)
        with warnings.catch_warnings():
            # bioimageio.spec reads the sample tensors without closing them.
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                descr = _describe(spec, model, kwargs, files, authors, name)
            except ValidationError as err:
                raise ValueError("the BMZ description would be invalid: " + "; ".join(
                    f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
                ) from None
            package = spec.save_bioimageio_package(descr,
                                                   output_path=Path(tmp) / "package.zip")
        with atomic_path(out) as partial:
            shutil.move(package, partial)
    return BMZExport(path=out, outputs=("mmse", "std") if stochastic else ("mmse",),
                     notes=notes)


def _import_spec():
    try:
        from bioimageio import spec
    except ImportError:
        raise ImportError("BMZ export needs bioimageio.spec: pip install "
                          "'hazematching[bmz]'") from None
    return spec


def _normalizer(model: Model) -> Normalizer:
    if model.normalizer is None:
        raise ValueError("the model is not trained (it has no normalisation): train or load it "
                         "first")
    return model.normalizer


def _notes(model: Model, kwargs: dict[str, Any]) -> list[str]:
    """What the package's outputs are, for the README and the user (first: the std's status)."""
    c = model.calibration
    if not model.method.stochastic:
        note = (f"Method {model.config.method!r} is deterministic: the package has one output, "
                f"the prediction ('mmse'), and no uncertainty.")
    elif c is None:
        note = ("The model is not calibrated: the 'std' output is the uncalibrated spread of "
                f"the {kwargs['n_samples']} posterior samples (run `hazematching calibrate` "
                f"on validation pairs and export again for a calibrated std).")
    else:
        rule = (f"the increasing piecewise-linear curve through {len(c.knots)} RMSE-vs-RMV "
                f"bins" if c.knots else f"σ_cal = {c.a:.6g}·σ + {c.b:.6g}")
        note = (f"The 'std' output is calibrated on validation data inside the network: {rule} "
                f"(normalised units), then scaled to target intensity units.")
    return [note]


@dataclass
class _Files:
    root: Path
    architecture: Path
    weights: Path
    test_input: Path
    test_outputs: dict[str, Path]
    samples: dict[str, Path]
    cover: Path
    readme: Path


def _write_files(root: Path, model: Model, net: BMZNetwork, block: np.ndarray,
                 mmse: np.ndarray, std: np.ndarray | None, notes: list[str],
                 kwargs: dict[str, Any]) -> _Files:
    arch = root / ARCHITECTURE_FILE
    arch.write_text(bundle_source(docstring=_ARCH_DOC))
    weights = root / WEIGHTS_FILE
    torch.save(net.state_dict(), weights)
    test_input = root / "test_input.npy"
    np.save(test_input, block)
    outputs = {"mmse": mmse} | ({} if std is None else {"std": std})
    test_outputs, samples = {}, {}
    for key, arr in {"widefield": block, **outputs}.items():
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if key != "widefield":
            test_outputs[key] = root / f"test_output_{key}.npy"
            np.save(test_outputs[key], arr)
        # The same tensors as TIFF, for people and viewers (.npy is for the reproducibility test).
        samples[key] = root / f"sample_{key}.tif"
        tifffile.imwrite(samples[key], arr[0, 0] if arr.shape[1] == 1 else arr[0])
    cover = cover_image(root / "cover.png", block[0, 0], mmse[0, 0],
                        None if std is None else std[0, 0])
    readme = root / "README.md"
    readme.write_text(readme_text(model, kwargs, notes))
    return _Files(root, arch, weights, test_input, test_outputs, samples, cover, readme)


_ARCH_DOC = ("BMZNetwork, the network of a hazematching BioImage Model Zoo package, with what "
             "it needs\n(NetworkConfig, the ODE solvers, the noise field, the U-Net), bundled "
             "at export time from\nthe hazematching modules "
             f"{', '.join(m.removeprefix('hazematching.') for m, _ in BMZ_BUNDLE)} "
             "(see hazematching.bmz.bundle).\n")


def _describe(spec, model: Model, kwargs: dict[str, Any], files: _Files,
              authors: Sequence[str] | None, name: str | None):
    """The bioimageio.spec ModelDescr of the package."""
    from bioimageio.spec.model import v0_5 as bmz

    from hazematching import __version__

    cfg, norm = model.config, _normalizer(model)
    c = cfg.in_channels
    t, div = cfg.sampling.tile_size, cfg.network.divisor
    names = ["widefield"] if c == 1 else [f"widefield{i}" for i in range(c)]
    gain = [1.0 / s.scale for s in norm.inputs]
    offset = [-s.offset / s.scale for s in norm.inputs]
    scale_in = (bmz.ScaleLinearKwargs(gain=gain[0], offset=offset[0]) if c == 1 else
                bmz.ScaleLinearAlongAxisKwargs(axis=bmz.AxisId("channel"), gain=gain,
                                               offset=offset))
    space = {a: bmz.SpaceInputAxis(id=bmz.AxisId(a), size=bmz.ParameterizedSize(min=t, step=div))
             for a in ("y", "x")}
    inputs = [bmz.InputTensorDescr(
        id=bmz.TensorId("widefield"),
        description="raw widefield image, intensities as recorded",
        axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier(n) for n in names]),
              space["y"], space["x"]],
        test_tensor=bmz.FileDescr(source=files.test_input),
        sample_tensor=bmz.FileDescr(source=files.samples["widefield"]),
        data=bmz.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=[bmz.ScaleLinearDescr(kwargs=scale_in)])]
    ts = norm.target.scale
    post = {"mmse": [bmz.ScaleLinearDescr(kwargs=bmz.ScaleLinearKwargs(
        gain=ts, offset=norm.target.offset))]}
    if "std" in files.test_outputs:  # the network returns the std calibrated, ≥ 0
        post["std"] = [bmz.ScaleLinearDescr(kwargs=bmz.ScaleLinearKwargs(gain=ts))]
    about = {"mmse": "posterior mean (MMSE estimate), target intensity units"
             if model.method.stochastic else "prediction, target intensity units",
             "std": "per-pixel posterior std, target intensity units"
             + (", calibrated" if model.calibration is not None else ", NOT calibrated")}
    outputs = [bmz.OutputTensorDescr(
        id=bmz.TensorId(key), description=about[key],
        axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier(key)]),
              *(_output_axis(bmz, a, cfg.sampling.tile_overlap // 2) for a in ("y", "x"))],
        test_tensor=bmz.FileDescr(source=path),
        sample_tensor=bmz.FileDescr(source=files.samples[key]),
        postprocessing=post[key]) for key, path in files.test_outputs.items()]
    weights = bmz.WeightsDescr(pytorch_state_dict=bmz.PytorchStateDictWeightsDescr(
        source=files.weights,
        architecture=bmz.ArchitectureFromFileDescr(source=files.architecture,
                                                   callable=bmz.Identifier("BMZNetwork"),
                                                   kwargs=kwargs),
        pytorch_version=bmz.Version(torch.__version__.split("+")[0])))
    meta = {"format": BMZ_FORMAT, "format_version": BMZ_FORMAT_VERSION,
            "hazematching_version": __version__, "config": cfg.model_dump(mode="json"),
            "normalization": norm.to_dict(),
            "calibration": model.calibration.to_dict() if model.calibration else None,
            "provenance": model.provenance}
    return bmz.ModelDescr(
        name=name or ("HazeMatching widefield dehazing" if cfg.method == "hazematching" else
                      f"{cfg.method} widefield dehazing (hazematching)"),
        description=("Dehazes widefield fluorescence images into confocal-like images"
                     + (" with a per-pixel posterior std (HazeMatching: guided conditional "
                        "flow matching)." if model.method.stochastic else ".")),
        authors=[bmz.Author(name=n) for n in (authors or PAPER_AUTHORS)],
        cite=[bmz.CiteEntry(text=PAPER_CITATION, doi=bmz.Doi(PAPER_DOI))],
        license=bmz.LicenseId("MIT"),
        documentation=bmz.FileDescr(source=files.readme),
        covers=[bmz.FileDescr(source=files.cover)],
        tags=["dehazing", "widefield", "confocal", "fluorescence-light-microscopy", "2d",
              "pytorch", "flow-matching", "uncertainty", "hazematching"],
        inputs=inputs, outputs=outputs, weights=weights,
        config=bmz.Config(hazematching=meta))


def _output_axis(bmz, axis: str, halo: int):
    """An output space axis as large as the input's; consumers that cut an image into blocks
    overlap them by `halo` px and drop that margin (our tiled predictor blends the overlap)."""
    size = bmz.SizeReference(tensor_id=bmz.TensorId("widefield"), axis_id=bmz.AxisId(axis))
    if halo < 1:
        return bmz.SpaceOutputAxis(id=bmz.AxisId(axis), size=size)
    return bmz.SpaceOutputAxisWithHalo(id=bmz.AxisId(axis), size=size, halo=halo)
