"""The HTTP request metrics: what prometheus_client's Counter and Histogram would export (their
`_created` samples included), counted without their locks."""

import re

from instapay.http.metrics import LATENCY_BUCKETS_S, Metrics


def exported(metrics: Metrics) -> dict[str, float]:
    """Each sample line of the text exposition, by its name and labels."""
    lines = metrics.render().decode().splitlines()
    samples = [line.rsplit(" ", 1) for line in lines if line and not line.startswith("#")]
    return {name: float(value) for name, value in samples}


def test_requests_are_counted_by_route_and_status_and_timed_by_route() -> None:
    metrics = Metrics(lambda: None, lambda: None)
    for route, status, seconds in [
        ("/v1/payments", 200, 0.0013),
        ("/v1/payments", 404, LATENCY_BUCKETS_S[0]),  # on a bound: counted in its bucket
        ("/v1/payments", 200, 7.0),  # beyond the last bound: +Inf only
        ("/healthz", 200, 0.0001),
    ]:
        metrics.observe(route, status, seconds)
    samples = exported(metrics)
    payments = 'route="/v1/payments"'
    assert samples[f'instapay_http_requests_total{{{payments},status="200"}}'] == 2
    assert samples[f'instapay_http_requests_total{{{payments},status="404"}}'] == 1
    assert samples['instapay_http_requests_total{route="/healthz",status="200"}'] == 1
    bucket = "instapay_http_request_seconds_bucket"
    assert samples[f'{bucket}{{le="0.0005",{payments}}}'] == 1
    assert samples[f'{bucket}{{le="0.002",{payments}}}'] == 2
    assert samples[f'{bucket}{{le="5.0",{payments}}}'] == 2
    assert samples[f'{bucket}{{le="+Inf",{payments}}}'] == 3
    assert samples[f"instapay_http_request_seconds_count{{{payments}}}"] == 3
    assert samples[f"instapay_http_request_seconds_sum{{{payments}}}"] == 0.0013 + 0.0005 + 7.0
    created = [name for name in samples if re.match(r"instapay_http_requests?\w*_created", name)]
    assert sorted(created) == sorted(
        [
            f'instapay_http_requests_created{{{payments},status="200"}}',
            f'instapay_http_requests_created{{{payments},status="404"}}',
            'instapay_http_requests_created{route="/healthz",status="200"}',
            f"instapay_http_request_seconds_created{{{payments}}}",
            'instapay_http_request_seconds_created{route="/healthz"}',
        ]
    )
