"""CITS, the Counterfactual Image-Text Score: this project's own summary of counterfactual quality.

CITS is defined by this project (it is not a published metric; see docs/metrics.md). For
one counterfactual with source image I₀, source caption T₀, counterfactual image I₁ and
counterfactual caption T₁, embedded by the judge model and L2-normalised:

* alignment    ``a = cos(I₁, T₁)``            — the new image shows the new caption;
* directional  ``d = cos(I₁ − I₀, T₁ − T₀)``  — the image changed the way the text changed;
* preservation ``p = cos(I₀, I₁)``            — everything else stayed the same.

Each similarity is mapped from [-1, 1] to [0, 1] by ``s ↦ (1 + s) / 2`` and CITS is their
harmonic mean::

    CITS = 3 / (1/a' + 1/d' + 1/p'),   a' = (1+a)/2, d' = (1+d)/2, p' = (1+p)/2

so it lies in [0, 1] and a counterfactual cannot score well by excelling on one axis while
failing another (an unedited copy has p' = 1 but d' = 0.5 at best, an unrelated image
has a low p'). A component that reaches 0 makes CITS 0.
"""

from __future__ import annotations

import numpy as np


def cits_score(alignment, direction, preservation) -> np.ndarray:
    """Element-wise CITS from the judge's three similarities (arrays or scalars)."""
    parts = [np.clip((1.0 + np.asarray(x, dtype=float)) / 2.0, 0.0, 1.0) for x in (alignment, direction, preservation)]
    stacked = np.stack(np.broadcast_arrays(*parts))
    with np.errstate(divide="ignore"):
        inverse = np.where(stacked > 0, 1.0 / stacked, np.inf)
    return np.where(np.isinf(inverse).any(axis=0), 0.0, 3.0 / inverse.sum(axis=0))
