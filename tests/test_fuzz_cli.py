"""Fuzzing the command line: any value of any config field gives exit 0 or 2 and one clear line.

``--show-config`` builds and validates the config without running anything, so these
tests touch no files; what only fails while running (a diverging learning rate) is the
experiments' own tests' business.
"""

import contextlib
import dataclasses
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unbottleneck.cli import main
from unbottleneck.experiments import REGISTRY, load_all

load_all()
FIELDS = [(name, f.name) for name, exp in sorted(REGISTRY.items()) for f in dataclasses.fields(exp.config_cls)]
EDGE = ["", " ", "abc", "nan", "inf", "-inf", "-1", "0", "1e308", "-0.5", "1,2", ",", ",,", "true", "none",
        "99999999999999999999", "0x10", "1_000", "é", "a=b", "--quick"]


def _run(args: list[str]) -> tuple[object, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(args)
        except SystemExit as exc:  # argparse's own errors exit 2 as well
            code = exc.code
    return code, err.getvalue()


def _check(name: str, key: str, value: str, tmp_path) -> None:
    out = tmp_path / "never-written"
    code, err = _run(["run", name, "--quick", "--show-config", "--out", str(out), "--set", f"{key}={value}"])
    assert code in (0, 2), (name, key, value, code, err)
    assert "Traceback" not in err, (name, key, value, err)
    if code == 2:
        assert err.startswith("unbottleneck: error:") or err.startswith("usage:"), err
    assert not out.exists()


@pytest.mark.parametrize("name, key", FIELDS)
def test_every_field_takes_every_edge_value_without_a_traceback(name, key, tmp_path):
    for value in EDGE:
        _check(name, key, value, tmp_path)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(FIELDS),
       value=st.one_of(st.text(max_size=12), st.integers().map(str),
                       st.floats(allow_nan=True, allow_infinity=True).map(repr),
                       st.lists(st.sampled_from(["1", "-2", "relu", "x", "nan", ""]), max_size=4).map(",".join)))
def test_random_values_exit_0_or_2_with_one_clear_line(field, value, tmp_path):
    _check(*field, value.replace("\x00", ""), tmp_path)


@settings(max_examples=60, deadline=None)
@given(flags=st.lists(st.sampled_from(["--quick", "--threads", "0", "-1", "abc", "--only", "nope", "iat-fit",
                                       "--repeats", "--resume", "--no-progress"]), max_size=5))
def test_reproduce_and_bench_flags(flags):
    """Random flag soups end in a one-line error (a trailing ``--only nope`` keeps them from running)."""
    for command in ("reproduce", "bench"):
        args = [command, *flags, "--only", "nope"]
        code, err = _run(args)
        assert code == 2 and "Traceback" not in err, (args, err)
