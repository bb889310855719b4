"""Comparisons of floating-point results that hold for any correct implementation on any CPU.

Two correct computations of the same mathematics that sum in another order (another reduction shape,
kernel, SIMD width or thread count) differ by rounding errors that grow with the magnitude of the terms
summed, not with the magnitude of each result: an element that is the near-cancelling sum of large terms
can differ by many times its own size times the machine epsilon. A tolerance relative to each element
(``rtol``) or an absolute one picked for the values seen on one machine therefore tests that machine's
rounding. :func:`assert_close_to_scale` bounds every difference by a fraction of the largest magnitude in
the compared tensor instead; a real error (a leaked padded word, a wrong axis, a missing term) moves results
by a sizeable fraction of that scale and still fails.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

# Fraction of a tensor's largest magnitude allowed as difference: about 1000 float32 epsilons (and as many
# float64 epsilons for float64), room for differently ordered reductions of thousands of terms.
EPSILONS = 1000.0


def scale_tolerance(expected: torch.Tensor, actual: torch.Tensor | None = None, *, rel: float | None = None) -> float:
    """The absolute tolerance ``rel * max(|expected|, |actual|)`` (``rel`` defaults to
    :data:`EPSILONS` epsilons of the dtype)."""
    if rel is None:
        rel = EPSILONS * torch.finfo(expected.dtype).eps
    scale = expected.detach().abs().max().item() if expected.numel() else 0.0
    if actual is not None and actual.numel():
        scale = max(scale, actual.detach().abs().max().item())
    return rel * scale


def assert_close_to_scale(
    actual, expected, *, rel: float | None = None, adam_lr: float = 0.0, msg: str | None = None
) -> None:
    """``torch.testing.assert_close`` with, per tensor, ``atol = rel * largest magnitude`` and ``rtol = 0``.

    Sequences and mappings are compared element by element, each tensor against its own scale. ``rel``
    defaults to :data:`EPSILONS` epsilons of the tensor's dtype (1.2e-4 for float32); pass a larger one where
    the two sides are different approximations (folded BatchNorm, a fused kernel of another accumulation).

    ``adam_lr``: the tensors are weights after Adam steps of this learning rate. Adam divides each gradient
    by its own root mean square, so a gradient element near Adam's epsilon (1e-8) turns a rounding-level
    difference into a sizeable fraction of ``lr``; ``lr / 100`` is added to the tolerance for it."""
    if isinstance(expected, torch.Tensor):
        if not isinstance(actual, torch.Tensor):
            actual = torch.as_tensor(actual, dtype=expected.dtype)
        if not expected.is_floating_point():
            torch.testing.assert_close(actual, expected, msg=_labelled(msg))
            return
        atol = scale_tolerance(expected, actual if actual.is_floating_point() else None, rel=rel) + adam_lr / 100
        torch.testing.assert_close(actual, expected, rtol=0.0, atol=atol, msg=_labelled(msg))
    elif isinstance(expected, Mapping):
        assert isinstance(actual, Mapping) and set(actual) == set(expected), msg or "keys differ"
        for key in expected:
            assert_close_to_scale(actual[key], expected[key], rel=rel, adam_lr=adam_lr, msg=msg or str(key))
    elif isinstance(expected, Sequence) and not isinstance(expected, str):
        assert isinstance(actual, Sequence) and len(actual) == len(expected), msg or "lengths differ"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close_to_scale(a, e, rel=rel, adam_lr=adam_lr, msg=msg or f"item {i}")
    else:
        torch.testing.assert_close(actual, expected, msg=_labelled(msg))


def _labelled(label: str | None):
    """Keep torch's description of the mismatch and put the label in front of it."""
    return None if label is None else (lambda text: f"{label}: {text}")
