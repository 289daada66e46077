"""bench/serve.py reads wrk's report: throughput, latency percentiles and every kind of error."""

import pytest

from bench.serve import parse_wrk

REPORT = """Running 10s test @ http://127.0.0.1:8765/predict-rating
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    28.41ms   30.09ms 253.00ms   93.01%
    Req/Sec   590.29     86.93   770.00     71.50%
  Latency Distribution
     50%   24.45ms
     75%   28.91ms
     90%   38.22ms
     99%  165.84ms
  11778 requests in 10.01s, 5.98MB read
{errors}Requests/sec:   1176.24
Transfer/sec:    611.57KB
"""


def test_reads_throughput_and_percentiles():
    r = parse_wrk(REPORT.format(errors=""))
    assert r == {"requests": 11778, "errors": 0, "rps": 1176.24, "p50_ms": 24.45, "p99_ms": 165.84}


def test_counts_non_2xx_and_socket_errors():
    errors = (
        "  Socket errors: connect 0, read 2, write 0, timeout 5\n  Non-2xx or 3xx responses: 40\n"
    )
    assert parse_wrk(REPORT.format(errors=errors))["errors"] == 47


# wrk prints "1.13s " (units padded to two characters): a slow run's report has it
@pytest.mark.parametrize(
    "text, ms", [("812.00us", 0.812), ("1.20s", 1200.0), ("1.13s ", 1130.0), ("3.5ms", 3.5)]
)
def test_latency_units(text, ms):
    report = REPORT.format(errors="").replace("24.45ms", text)
    assert parse_wrk(report)["p50_ms"] == pytest.approx(ms)


def test_a_report_without_percentiles_is_a_clear_error():
    report = REPORT.format(errors="").replace("     50%   24.45ms\n", "")
    with pytest.raises(ValueError, match="no 50%/99% latency lines"):
        parse_wrk(report)
