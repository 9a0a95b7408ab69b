"""The ``no_interpreter_overflow_checks`` fixture (tests/conftest.py): off inside the tests that ask for it, on
everywhere else (the kernel tests rely on Triton's interpreter checking every int32 add/sub/mul for overflow)."""

from __future__ import annotations

import pytest

interpreter = pytest.importorskip("triton.runtime.interpreter", reason="needs triton")


@pytest.mark.usefixtures("no_interpreter_overflow_checks")
def test_the_fixture_turns_the_checks_off() -> None:
    assert interpreter.interpreter_builder.options.sanitize_overflow is False


def test_the_interpreter_checks_overflow_by_default() -> None:
    assert interpreter.interpreter_builder.options.sanitize_overflow is True  # also after any test that turned it off
