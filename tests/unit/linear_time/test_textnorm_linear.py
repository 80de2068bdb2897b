"""textnorm.normalize on hostile shapes: time grows linearly with the input."""

from __future__ import annotations

from services.common.textnorm import normalize
from tests.unit.linear_time.growth import assert_linear


def test_escapes_after_one_long_token_take_linear_time() -> None:
    # The decoder widened the escape run to whole tokens with a `\S*$` search over
    # the whole prefix, retried at every position of the long token: quadratic.
    assert_linear(normalize, lambda n: "a" * (n - 10) + " %41%42%43", small=4096)
