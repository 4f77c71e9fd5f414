"""The fusion engine (pure numpy / scikit-learn, no Kafka, no clock): a batch of finished
requests in, one explained result per request out.

``Fuser`` is the entry point; the modules below it hold the batch form (``batch``), the
table of strategies (``registry``: each declared once, with its task), the strategies as
array functions (``strategies``, ``stacking``), fitted artefacts
(``artefact``), the result dicts (``result``) and offline fitting (``fit``, imported on
its own because it needs scipy's optimiser and scikit-learn's model selection).
The text task: the strategies over texts (``text``), their similarities
(``similarity``, ``ngram``) and normalisation (``textnorm``). Learning from feedback:
member temperatures (``calibration``), adaptive weights (``adaptive``), the feedback
memory (``feedback``), live quality windows (``quality``); and the early decision
(``early``).
"""

from __future__ import annotations

from worker.fusion.artefact import load_stacker, load_weights
from worker.fusion.batch import Batch, build_batch
from worker.fusion.fuser import Fuser
from worker.fusion.result import COMPLETE, INSUFFICIENT, PARTIAL, Fused
from worker.fusion.stacking import Stacker

__all__ = [
    "COMPLETE",
    "INSUFFICIENT",
    "PARTIAL",
    "Batch",
    "Fused",
    "Fuser",
    "Stacker",
    "build_batch",
    "load_stacker",
    "load_weights",
]
