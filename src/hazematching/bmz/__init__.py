"""BioImage Model Zoo packages: export a trained model, and read such a package back.

``export_bmz(model, "model.zip")`` writes a package that bioimageio.core runs (a deterministic
network returning the MMSE and calibrated std); ``load_bmz("model.zip")`` /
``import_bmz("model.zip", "model_dir")`` restore the full hazematching model from it.
"""

from hazematching.bmz.export import BMZExport as BMZExport
from hazematching.bmz.export import UncalibratedExportWarning as UncalibratedExportWarning
from hazematching.bmz.export import export_bmz as export_bmz
from hazematching.bmz.load import import_bmz as import_bmz
from hazematching.bmz.load import load_bmz as load_bmz
