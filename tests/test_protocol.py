"""mbot.protocol as pure functions: every rule of docs/protocol.md, and a fuzzer that it never crashes."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from mbot import protocol
from mbot.protocol import Hello, ProtocolError, Result, Samples

METRICS = {
    "cpu": 12.5, "cpu_cores": [10.0, 15.0], "load": [0.5, 0.4, 0.3],
    "ram": {"used": 4, "total": 16}, "swap": {"used": 0, "total": 2},
    "disks": {"/": {"used": 50, "total": 100}, "/home": {"used": 1, "total": 4}},
    "disk_io": {"read": 1024.0, "write": 2048.0},
    "net": {"eth0": {"rx": 100.0, "tx": 50.0}, "wlan0": {"rx": 1.0, "tx": 2.0}},
    "temps": {"cpu": 54.0}, "uptime": 100.0, "procs": 231,
    "gpus": [{"name": "H100", "util": 87.0, "vram_used": 1, "vram_total": 4, "temp": 61.0, "power": 312.5}],
    "some_future_metric": {"anything": [1, 2]},
}


def sample(**overrides):
    frame = {"type": "sample", "seq": 1, "ts": 1_700_000_000.5, "metrics": METRICS}
    frame.update(overrides)
    return json.dumps(frame)


def test_sample_round_trip_and_series_names():
    frame = protocol.parse_agent_frame(sample())
    assert isinstance(frame, Samples)
    (s,) = frame.items
    assert (s.seq, s.ts) == (1, 1_700_000_000.5)
    assert "some_future_metric" not in s.metrics  # unknown fields are ignored
    assert s.series == {
        "cpu": 12.5, "cpu:0": 10.0, "cpu:1": 15.0, "load1": 0.5, "load5": 0.4, "load15": 0.3,
        "ram": 25.0, "ram_used": 4, "ram_total": 16, "swap": 0.0, "swap_used": 0, "swap_total": 2,
        "disk:/": 50.0, "disk_used:/": 50, "disk_total:/": 100,
        "disk:/home": 25.0, "disk_used:/home": 1, "disk_total:/home": 4,
        "disk_read": 1024.0, "disk_write": 2048.0,
        "net_rx": 101.0, "net_rx:eth0": 100.0, "net_rx:wlan0": 1.0,
        "net_tx": 52.0, "net_tx:eth0": 50.0, "net_tx:wlan0": 2.0,
        "temp:cpu": 54.0, "uptime": 100.0, "procs": 231,
        "gpu0": 87.0, "vram0": 25.0, "vram_used0": 1, "vram_total0": 4, "gputemp0": 61.0, "power0": 312.5,
    }


def test_hello_and_unknown_fields():
    frame = protocol.parse_agent_frame(json.dumps({
        "type": "hello", "v": 1, "agent": "0.1.0", "epoch": 5, "hostname": "box", "os": "Linux", "interval": 2,
        "cpu_count": 4, "mem_total": 100, "disks": ["/"], "gpus": [], "capabilities": ["power"], "new": 1}))
    assert isinstance(frame, Hello)
    assert (frame.epoch, frame.interval, frame.agent_version) == (5, 2.0, "0.1.0")
    assert frame.capabilities == {"power"}
    assert "new" not in frame.facts


def test_batch_must_increase():
    items = [json.loads(sample(seq=n))for n in (1, 3, 2)]
    with pytest.raises(ProtocolError, match="increase"):
        protocol.parse_agent_frame(json.dumps({"type": "samples", "samples": items}))
    ok = protocol.parse_agent_frame(json.dumps({"type": "samples", "samples": items[:2]}))
    assert [s.seq for s in ok.items] == [1, 3]


def test_result_frame():
    frame = protocol.parse_agent_frame(json.dumps({"type": "result", "id": "abc", "ok": False, "message": "no"}))
    assert frame == Result("abc", False, "no")


@pytest.mark.parametrize("frame, code, reason", [
    (b"\x00binary", protocol.CLOSE_UNSUPPORTED, "binary"),
    ("{nope", protocol.CLOSE_INVALID, "JSON"),
    ("[1, 2]", protocol.CLOSE_INVALID, "object"),
    ("[" * 100_000 + "]" * 100_000, protocol.CLOSE_INVALID, "JSON"),
    ('{"type": "sample", "seq": 1, "ts": 1e9, "metrics": {"cpu": NaN}}', protocol.CLOSE_INVALID, "JSON"),
    ('{"type": "sample", "seq": 1, "ts": 1e9, "metrics": {"cpu": Infinity}}', protocol.CLOSE_INVALID, "JSON"),
    (sample(seq="1"), protocol.CLOSE_INVALID, "seq"),
    (sample(seq=0), protocol.CLOSE_INVALID, "seq"),
    (sample(seq=True), protocol.CLOSE_INVALID, "seq"),
    (sample(metrics={"cpu": 101}), protocol.CLOSE_INVALID, "cpu"),
    (sample(metrics={"cpu": "high"}), protocol.CLOSE_INVALID, "cpu"),
    (sample(metrics={"ram": {"used": -1, "total": 10}}), protocol.CLOSE_INVALID, "ram.used"),
    (sample(metrics={"ram": {"used": 11, "total": 10}}), protocol.CLOSE_INVALID, "more than total"),
    (sample(metrics={"load": [1, 2]}), protocol.CLOSE_INVALID, "load"),
    (sample(metrics={"temps": {str(i): 1 for i in range(5000)}}), protocol.CLOSE_POLICY, "entries"),
    (sample(metrics=[]), protocol.CLOSE_INVALID, "metrics"),
    (json.dumps({"type": "hello", "v": 2, "agent": "x", "epoch": 1}), protocol.CLOSE_POLICY, "version"),
    (json.dumps({"type": "hello", "v": 1, "agent": "x"}), protocol.CLOSE_INVALID, "epoch"),
    (json.dumps({"type": "launch"}), protocol.CLOSE_POLICY, "unknown frame type"),
    (json.dumps({"type": "samples", "samples": []}), protocol.CLOSE_INVALID, "non-empty"),
    ("x" * (protocol.MAX_FRAME_BYTES + 1), protocol.CLOSE_TOO_BIG, "1 MiB"),
])
def test_bad_frames_say_why(frame, code, reason):
    with pytest.raises(ProtocolError) as error:
        protocol.parse_agent_frame(frame)
    assert error.value.close_code == code
    assert reason in error.value.reason


@pytest.mark.parametrize("value, reason", [
    ("true", "must be a number"), ('"5"', "must be a number"), (str(2**53 + 1), "integers above 2^53"),
    ("1e999", "must be finite"), ("-1e999", "must be finite"), ("-0.5", "must be >= 0, got -0.5"),
    ("100.5", "must be <= 100, got 100.5"), ("-5", "must be >= 0, got -5"), (str(-2**60), "integers above 2^53"),
])
def test_numbers_are_refused_with_the_reason(value, reason):
    # The fast path for plain valid numbers leaves every refusal, and its reason, to the full checks.
    frame = '{"type": "sample", "seq": 1, "ts": 1700000000, "metrics": {"cpu": %s}}' % value
    with pytest.raises(ProtocolError) as error:
        protocol.parse_agent_frame(frame)
    assert error.value.reason.startswith(f"sample.metrics.cpu: {reason}")


def test_numbers_and_labels_come_out_normalised():
    long = "d" * 200
    (parsed,) = protocol.parse_agent_frame(sample(metrics={
        "cpu": 100, "ram": {"used": 2**53, "total": 2**53}, "uptime": 0.0,
        "temps": {"cpu": 40, "\u0434\u0438\u0441\u043a": 30.5, "a\tb": 1, "a\nb": 2, "\ud800": 3, long: 4},
    })).items
    assert parsed.metrics["cpu"] == 100.0 and type(parsed.metrics["cpu"]) is float
    assert parsed.metrics["ram"] == {"used": float(2**53), "total": float(2**53)}
    # Printable non-ASCII kept; control characters and lone surrogates become U+FFFD (two keys that clean alike:
    # the last wins); over-long labels are cut.
    assert parsed.metrics["temps"] == {"cpu": 40.0, "\u0434\u0438\u0441\u043a": 30.5, "a\ufffdb": 2.0,
                                       "\ufffd": 3.0, "d" * 127 + "\u2026": 4.0}


def test_server_frames():
    assert json.loads(protocol.ack(7)) == {"type": "ack", "seq": 7}
    assert json.loads(protocol.error("bad_frame", "x")) == {"type": "error", "code": "bad_frame", "message": "x"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)
metric_keys = st.sampled_from(["cpu", "cpu_cores", "load", "ram", "swap", "disks", "disk_io", "net", "temps",
                               "uptime", "procs", "gpus", "dropped"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(metric_keys, json_values, max_size=6), st.integers(), json_values)
def test_fuzz_parser_only_raises_protocol_errors(metrics, seq, ts):
    for text in (json.dumps({"type": "sample", "seq": seq, "ts": ts, "metrics": metrics}),
                 json.dumps({"type": "samples", "samples": [{"seq": seq, "ts": ts, "metrics": metrics}]})):
        try:
            frame = protocol.parse_agent_frame(text)
        except ProtocolError:
            continue
        for item in frame.items:
            assert all(isinstance(v, float | int) for v in item.series.values())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_fuzz_garbage(data):
    try:
        protocol.parse_agent_frame(data)
    except ProtocolError:
        pass
