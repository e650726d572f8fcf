"""Physics of the Belle II tau -> 3mu search, free of any workflow engine.

Each module is one analysis stage and takes plain values (polars tables, numpy
arrays, floats in GeV); the Prefect flows in ``flows/`` wire them together.
"""

__version__ = "0.1.0"
