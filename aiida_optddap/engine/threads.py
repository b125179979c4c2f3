"""Small dense algebra on one CPU thread: the one place that sets torch's thread count.

Threaded BLAS/LAPACK on small tensors gains nothing and, on busy cores, stalls. Measured: twenty 20-atom frames,
16 ms on one thread against 30–90 ms on two (docs/benchmarks.md, "Many small frames"); an 8-atom σ_start scan
over two joint frames, 0.8 s against 18 s on two busy cores; one species A of an 8-atom frame, 0.24 ms against
5.5 ms; a 128×128 eigh, 3 ms against 0.9 s.
"""

from __future__ import annotations

from contextlib import contextmanager

#: Fits whose largest frame has at most this many coefficients (atoms × Gaussians) run on one CPU thread.
SERIAL_COEFFICIENTS = 300


def small_on_cpu(device_type: str, n_coefficients: int) -> bool:
    """Whether a fit of ``n_coefficients`` on ``device_type`` belongs on one thread (:data:`SERIAL_COEFFICIENTS`)."""
    return device_type == "cpu" and n_coefficients <= SERIAL_COEFFICIENTS


@contextmanager
def single_thread(active: bool = True):
    """torch on one CPU thread inside the block (when ``active``), the previous setting restored after."""
    import torch

    previous = torch.get_num_threads()
    if active and previous > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
