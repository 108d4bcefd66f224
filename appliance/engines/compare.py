"""Compare two greedy generations that should match (batch vs single, ONNX vs PyTorch).

Float rounding differs between kernels and batch shapes, so two correct runs may pick different
tokens where the top two logits are within rounding of each other. `divergence` accepts exactly
that case and nothing else.
"""

from __future__ import annotations

from appliance.engines.common import Generation

NEAR_TIE = 1e-4


def divergence(a: Generation, b: Generation, tol: float = NEAR_TIE) -> str | None:
    """None when the token ids match or first differ at a genuine near tie; else the reason.

    Both generations need `logits` (GenParams.return_logits=True) once their tokens differ.
    """
    if a.token_ids == b.token_ids:
        return None
    step = next(
        (i for i, (x, y) in enumerate(zip(a.token_ids, b.token_ids, strict=False)) if x != y),
        min(len(a.token_ids), len(b.token_ids)),  # one stopped earlier: the end token differs
    )
    if a.logits is None or b.logits is None:
        return f"tokens differ at step {step} and no logits were kept to check for a near tie"
    if step >= len(a.logits) or step >= len(b.logits):
        return f"tokens differ at step {step} beyond the kept logits"
    la, lb = a.logits[step], b.logits[step]
    ta, tb = int(la.argmax()), int(lb.argmax())
    gaps = {
        "gap in a": abs(float(la[ta] - la[tb])),
        "gap in b": abs(float(lb[ta] - lb[tb])),
        f"a vs b at token {ta}": abs(float(la[ta] - lb[ta])),
        f"a vs b at token {tb}": abs(float(la[tb] - lb[tb])),
    }
    worst = max(gaps, key=gaps.__getitem__)
    if gaps[worst] > tol:
        return (
            f"tokens differ at step {step} ({ta} vs {tb}) and it is no near tie: "
            f"{worst} = {gaps[worst]:.2e} > {tol:.0e}"
        )
    return None
