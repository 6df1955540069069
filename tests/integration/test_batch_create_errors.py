from __future__ import annotations

import pytest

from tests.support.harness import Harness
from tests.support.lines import ENDPOINT, batch_line


@pytest.mark.parametrize(
    ("override", "param", "code"),
    [
        ({"completion_window": "2h"}, "completion_window", "invalid_value"),
        ({"endpoint": "/v1/bogus"}, "endpoint", "invalid_value"),
        ({"endpoint": "/v1/moderations"}, "endpoint", "invalid_value"),
        ({"metadata": {"k": 3}}, "metadata.k", "invalid_type"),
        ({"metadata": {"k": "v" * 513}}, "metadata.k", "invalid_value"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "invalid_value"),
        ({"metadata": {"k" * 65: "v"}}, "metadata", "invalid_value"),
    ],
)
async def test_bad_create_parameters_are_400s(
    harness: Harness, override: dict[str, object], param: str, code: str
) -> None:
    file_id = await harness.upload([batch_line("a")])
    body = {"input_file_id": file_id, "endpoint": ENDPOINT, "completion_window": "24h",
            **override}
    response = await harness.client.post("/v1/batches", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code,
                                                              "invalid_request_error")
    listed = (await harness.client.get("/v1/batches")).json()
    assert listed["data"] == []


@pytest.mark.parametrize("window", ["1h", "3h", "6h", "12h", "24h", "48h", "72h"])
async def test_every_supported_window_is_accepted(harness: Harness, window: str) -> None:
    batch = await harness.create_batch(await harness.upload([batch_line("a")]),
                                       completion_window=window)
    assert batch["completion_window"] == window


async def test_missing_field_is_a_400_naming_it(harness: Harness) -> None:
    response = await harness.client.post("/v1/batches", json={"endpoint": ENDPOINT,
                                                               "completion_window": "24h"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input_file_id"
    assert response.json()["error"]["code"] == "missing_required_parameter"


async def test_unknown_batch_is_404(harness: Harness) -> None:
    for response in (await harness.client.get("/v1/batches/batch_nope"),
                     await harness.client.post("/v1/batches/batch_nope/cancel")):
        assert response.status_code == 404
        assert response.json()["error"]["message"].startswith("No batch found")


async def test_malformed_json_body_is_a_400(harness: Harness) -> None:
    response = await harness.client.post("/v1/batches", content=b"{not json",
                                         headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
