"""prunekit's pruning library: pure PyTorch, no Hydra/Lightning/W&B.

Filter pruning that physically removes channels, connection pruning with masks,
Deep Compression storage, BatchNorm folding and honest measurement.
"""

# --- measurement (measure.py) ---
from pruning.measure import Counts, count, dense_bytes, measure_latency, nonzero_params

# --- structured pruning engine (graph.py, handlers.py, criteria.py, structured.py, record.py) ---

# --- connection pruning, Deep Compression, sparse inference, BN folding ---
