"""Evaluation metrics: fidelity, realism/perceptual, Fourier-domain and uncertainty measures.

:func:`evaluate_arrays` / :func:`evaluate_folders` run them all and return JSON-ready results;
:mod:`hazematching.report` renders those as tables, plots and an HTML page.
"""

from hazematching.metrics.evaluate import (
                                           METRICS,
                                           evaluate_arrays,
                                           evaluate_folders,
                                           load_gallery,
                                           load_results,
                                           save_gallery,
                                           save_results,
)
from hazematching.metrics.fidelity import (
                                           MicroParams,
                                           fit_micro,
                                           micro_ms3im,
                                           micro_ssim,
                                           ms_ssim,
                                           psnr,
                                           ri_psnr,
                                           ssim,
                                           structural_batch,
)
from hazematching.metrics.perceptual import (
                                           WEIGHTS_ENV,
                                           FIDScorer,
                                           LPIPSScorer,
                                           MetricUnavailableError,
                                           MissingWeightsError,
                                           fid,
                                           fsim,
                                           gmsd,
                                           lpips,
                                           require_weights,
                                           tile_patches,
                                           to_unit_range,
                                           weights_directory,
)
from hazematching.metrics.spectral import (
                                           FRC_THRESHOLD,
                                           frc_crossing,
                                           frc_curve,
                                           power_spectrum_ratio,
)
from hazematching.metrics.uncertainty import std_from_samples, uncertainty_summary

__all__ = [
    "FRC_THRESHOLD", "METRICS", "WEIGHTS_ENV", "FIDScorer", "LPIPSScorer",
    "MetricUnavailableError", "MicroParams", "MissingWeightsError", "evaluate_arrays",
    "evaluate_folders", "fid", "fit_micro", "frc_crossing", "frc_curve", "fsim", "gmsd",
    "load_gallery", "load_results", "lpips", "micro_ms3im", "micro_ssim", "ms_ssim",
    "power_spectrum_ratio", "psnr", "require_weights", "ri_psnr", "save_gallery",
    "save_results", "ssim", "std_from_samples", "structural_batch", "tile_patches",
    "to_unit_range", "uncertainty_summary", "weights_directory",
]
