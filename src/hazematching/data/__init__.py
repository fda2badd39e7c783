"""Data: paired images on disk, normalisation, patches, tiling, simulation and downloads."""
