"""`run_study`: the paper's experiment grid (surrogates x settings x attacks), content-addressed,
resumable and shardable over processes (torchrun) and machines that share the output folder.

    grid    run_study: plans the cells, runs the work items, assembles the table
    images  the study's images (a folder selected per surrogate, or arrays)
    ranks   this process's place under torchrun
    tables  a cell's row, the table of a study folder, load_results
"""

from .grid import CHUNK_SIZE, run_study
from .images import PAPER_N, RecomputeWarning
from .tables import load_results, summarize

__all__ = ["CHUNK_SIZE", "PAPER_N", "RecomputeWarning", "load_results", "run_study", "summarize"]
