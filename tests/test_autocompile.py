"""engine.compile auto's choice, worked by hand (the end-to-end run is in test_engine)."""
from __future__ import annotations

import pytest

from quantlab.engine.autocompile import PROBE_STEPS, SHARE, StepClock, choose


def test_compiles_when_the_compile_is_at_most_5_percent_of_the_time_left():
    assert SHARE == 0.05
    # 120 s against 2400 steps of 1 s: exactly 5%; one step fewer: just over
    assert choose(120.0, 1.0, 2400)[0] is True
    assert choose(120.0, 1.0, 2399)[0] is False
    compiled, line = choose(60.0, 0.5, 100)  # 60 s of 50 s left: 120%
    assert not compiled and "staying eager" in line and "120% of the ~50 s left (100 steps of 500 ms" in line
    assert choose(0.0, 0.5, 0)[0] is False  # nothing left to gain


def test_the_step_time_is_the_median_of_the_probed_steps_after_the_first():
    clock = StepClock()
    for seconds in [9.0, 1.0, 3.0, 2.0]:  # the first step allocates: left out
        clock.add(seconds)
    assert not clock.ready()
    clock.add(100.0)
    assert clock.ready() and PROBE_STEPS == 4
    assert clock.step_seconds() == pytest.approx(2.5)  # median of 1, 3, 2, 100
