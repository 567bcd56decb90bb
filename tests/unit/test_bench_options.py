"""scripts/bench_throughput.py --set: topology overrides are checked before any stack starts,
and the hand loop and the ceiling follow the pipeline's batch size."""

from __future__ import annotations

import pytest

from scripts.bench_throughput import parse_args, set_key


def test_set_parses_yaml_values_and_nested_paths() -> None:
    args = parse_args(["--set", "batch.max_size=256", "--set", "window.max_ms=5"])
    assert args.set == [("batch.max_size", 256), ("window.max_ms", 5)]
    data: dict[str, object] = {"batch": {"max_size": 128}}
    set_key(data, "batch.max_size", 256)
    assert data == {"batch": {"max_size": 256}}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nosuch.key=1", "no section 'nosuch'"),
        ("batch.max_size=0", "greater than 0"),
        ("batch=1", "no longer valid"),
        ("batch.max_size", "expected KEY.PATH=VALUE"),
        ("source.topics=[x]", "set by the benchmark"),
        ("model.name=other", "set by the benchmark"),
        ("broker.bootstrap_servers=h:1", "set by the benchmark"),
    ],
)
def test_a_wrong_override_fails_before_anything_starts(
    override: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--set", override])
    assert message in str(exited.value) + capsys.readouterr().err
