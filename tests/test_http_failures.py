"""What the HTTP layer does when the input or the disk fails: oversized headers are refused before
any handler runs, and after a log failure the server says it is not ready and refuses payments."""

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from instapay.client import ApiError
from servers import DEMO, serving


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


@pytest.mark.parametrize(
    "headers",
    [{"X-Long": "a" * 9000}, {f"X-Header-{n}": "v" for n in range(200)}],
    ids=["a header over 8190 bytes", "200 headers"],
)
def test_oversized_headers_are_refused_and_the_server_goes_on(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api:
            async with api.session.get(api.base_url + "/healthz", headers=headers) as response:
                assert response.status == 400
            async with api.session.get(api.base_url + "/healthz") as response:
                assert response.status == 200

    run(scenario())


def test_after_a_log_failure_readyz_and_payments_answer_503(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with serving(tmp_path, DEMO.config()) as api, api.client() as client:
            writer = api.engine._writer()
            os.close(writer.fd)  # the next write fails with EBADF, as a dying disk would fail it
            with pytest.raises(ApiError) as refused:
                await client.create_payment(
                    order_id="o-1", payer=DEMO.payer(0), amount=1, currency="EUR"
                )
            assert (refused.value.status, refused.value.code) == (503, "unavailable")
            async with api.session.get(api.base_url + "/readyz") as response:
                assert response.status == 503, "a stopped engine is not ready"
            writer.fd = os.open(os.devnull, os.O_WRONLY)  # let close() release something valid

    run(scenario())
