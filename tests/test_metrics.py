"""Prometheus text rendering, read back by a strict parser of the 0.0.4 text format."""

from __future__ import annotations

import math
import re

import pytest

from shardsync.daemon.metrics import CONTENT_TYPE, Exposition, format_value

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_VALUE = r"[+-]?(?:Inf|NaN|[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
_HELP_RE = re.compile(rf"# HELP ({_NAME}) ((?:[^\\\n]|\\\\|\\n)*)")
_TYPE_RE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")
_SAMPLE_RE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? ({_VALUE})")
_PAIR_RE = re.compile(rf'({_LABEL})="((?:[^\\"\n]|\\\\|\\"|\\n)*)"(,|$)')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], text)


def parse(text: str) -> dict[str, dict]:
    """A strict reader: every line must match the grammar, HELP/TYPE before samples, once each."""
    assert text == "" or text.endswith("\n"), "exposition must end with a newline"
    families: dict[str, dict] = {}
    for line in text.splitlines():
        if m := _HELP_RE.fullmatch(line):
            fam = families.setdefault(m[1], {"samples": []})
            assert "help" not in fam and not fam["samples"], f"late or repeated HELP: {line}"
            fam["help"] = _unescape(m[2])
        elif m := _TYPE_RE.fullmatch(line):
            fam = families.setdefault(m[1], {"samples": []})
            assert "type" not in fam and not fam["samples"], f"late or repeated TYPE: {line}"
            fam["type"] = m[2]
        elif m := _SAMPLE_RE.fullmatch(line):
            assert m[1] in families and "type" in families[m[1]], f"sample before TYPE: {line}"
            labels: dict[str, str] = {}
            rest = m[2] or ""
            while rest:
                pair = _PAIR_RE.match(rest)
                assert pair, f"bad labels in {line!r}"
                assert pair[1] not in labels, f"repeated label in {line!r}"
                labels[pair[1]] = _unescape(pair[2])
                rest = rest[pair.end():]
            value = float(m[3].replace("Inf", "inf"))
            families[m[1]]["samples"].append((labels, value))
        else:
            raise AssertionError(f"line does not parse: {line!r}")
    return families


def test_counters_and_gauges_round_trip():
    exp = Exposition()
    exp.counter("shardsync_bytes_fetched_total", "Bytes downloaded.", 1234, {"model": "a"})
    exp.counter("shardsync_bytes_fetched_total", "Bytes downloaded.", 0, {"model": "b"})
    exp.gauge("shardsync_up", "1 while the service runs.", 1)
    exp.gauge("shardsync_last_success_seconds", "Unix time of the last success.", 1.7e9 + 0.25)
    parsed = parse(exp.render())
    assert parsed["shardsync_bytes_fetched_total"] == {
        "help": "Bytes downloaded.",
        "type": "counter",
        "samples": [({"model": "a"}, 1234.0), ({"model": "b"}, 0.0)],
    }
    assert parsed["shardsync_up"]["samples"] == [({}, 1.0)]
    assert parsed["shardsync_last_success_seconds"]["samples"] == [({}, 1.7e9 + 0.25)]
    assert list(parsed) == [
        "shardsync_bytes_fetched_total", "shardsync_up", "shardsync_last_success_seconds",
    ]


def test_label_values_and_help_are_escaped():
    nasty = 'a "quoted" back\\slash\nnew line, comma } brace'
    exp = Exposition()
    exp.gauge("m", 'help with \\ and\nnewline and "quotes"', 2, {"error": nasty, "model": "x"})
    text = exp.render()
    assert len(text.splitlines()) == 3  # the newlines did not leak into the output
    assert '\\"quoted\\"' in text
    parsed = parse(text)
    assert parsed["m"]["help"] == 'help with \\ and\nnewline and "quotes"'
    assert parsed["m"]["samples"] == [({"error": nasty, "model": "x"}, 2.0)]


def test_special_values():
    assert format_value(float("nan")) == "NaN"
    assert format_value(math.inf) == "+Inf"
    assert format_value(-math.inf) == "-Inf"
    assert format_value(3.0) == "3"
    assert format_value(0.5) == "0.5"
    assert format_value(7) == "7"
    exp = Exposition()
    exp.gauge("g", "h", float("nan"), {"k": "1"})
    exp.gauge("g", "h", math.inf, {"k": "2"})
    samples = parse(exp.render())["g"]["samples"]
    assert math.isnan(samples[0][1]) and samples[1][1] == math.inf


def test_declared_family_without_samples_still_has_help_and_type():
    exp = Exposition()
    exp.declare("shardsync_sync_failures_total", "counter", "Failed syncs.")
    assert parse(exp.render()) == {
        "shardsync_sync_failures_total": {"help": "Failed syncs.", "type": "counter", "samples": []}
    }
    assert Exposition().render() == ""


@pytest.mark.parametrize(
    "call",
    [
        lambda e: e.gauge("bad-name", "h", 1),
        lambda e: e.gauge("g", "h", 1, {"bad-label": "v"}),
        lambda e: e.gauge("g", "h", 1, {"__reserved": "v"}),
        lambda e: e.gauge("g", "h", 1, {"k": 3}),
        lambda e: e.counter("c_total", "h", -1),
        lambda e: (e.gauge("g", "h", 1, {"k": "v"}), e.gauge("g", "h", 2, {"k": "v"})),
        lambda e: (e.gauge("g", "h", 1), e.counter("g", "h", 2)),
        lambda e: (e.gauge("g", "h", 1, {"k": "1"}), e.gauge("g", "other", 2, {"k": "2"})),
    ],
)
def test_mistakes_are_refused(call):
    with pytest.raises(ValueError):
        call(Exposition())


def test_non_numeric_value_is_refused():
    with pytest.raises(TypeError):
        Exposition().gauge("g", "h", "1")  # type: ignore[arg-type]


def test_parser_is_strict():
    # The parser above must reject what a scraper rejects, or the round trips prove nothing.
    for bad in ['m{k="unterminated} 1\n', "m 1 extra junk\n", 'm{k="a\\x"} 1\n', "m 1"]:
        with pytest.raises(AssertionError):
            parse("# TYPE m gauge\n" + bad)
    assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")
