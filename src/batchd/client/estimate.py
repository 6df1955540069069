"""`batchd estimate FILE`: what a batch of FILE would cost and when it would be done, before
it is submitted (POST /v1/files/{id}/estimate)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from batchd.client.commands import (
    ApiKey,
    AsJson,
    BaseUrl,
    _client,
    _err,
    _fail,
    _out,
    _print_errors,
    _print_json,
    one_line_errors,
)
from batchd.client.terminal import print_table, safe
from batchd.client.watch import clock_text

METHODS = {"tokenizer": "counted by the model's tokenizer",
           "tokenizer_scaled": "counted by the model's tokenizer (the first 20,000; the rest "
                               "scaled by size)",
           "tokenizer_partly": "counted by the model's tokenizer, but for requests it would "
                               "refuse (estimated from characters)",
           "estimate": "estimated from characters (no tokenizer for this model)"}


def _money(amount: float | None, currency: str) -> str:
    if amount is None:
        return "-"
    return f"{amount:,.4f} {currency.upper()}"


@one_line_errors
def estimate(
    file: Annotated[str, typer.Argument(
        help="A JSONL file of requests (uploaded for the estimate, then deleted) or the id "
             "of one uploaded already (file-…).")],
    endpoint: Annotated[str | None, typer.Option(
        help="The batch's endpoint (default: the url of the file's first request).")] = None,
    keep: Annotated[bool, typer.Option(
        "--keep", help="Keep the uploaded file (and print its id) to submit it later.")
    ] = False,
    as_json: AsJson = False, base_url: BaseUrl = None, api_key: ApiKey = None,
) -> None:
    """Requests, prompt tokens, the most output tokens, cost and expected time per model."""
    path = Path(file)
    with _client(base_url, api_key) as client:
        if path.is_file():
            file_id = client.upload(path)["id"]
            uploaded = True
        elif file.startswith("file-"):
            file_id, uploaded = file, False
        else:
            _fail(f"{file!r} is neither a file here nor a file id (file-…)", status=2)
        try:
            answer = client.estimate(file_id, endpoint=endpoint)
        finally:
            if uploaded and not keep:
                try:
                    client.delete_file(file_id)
                except Exception as exc:  # said, not raised: the estimate's own error matters
                    _err().print(f"could not delete the uploaded {safe(file_id)}: "
                                 f"{safe(str(exc))}", highlight=False)
    if as_json:
        _print_json(answer)
        return
    _print(answer, kept=file_id if uploaded and keep else None)


def _print(answer: dict[str, Any], *, kept: str | None) -> None:
    out, err = _out(), _err()
    rows = []
    for model in answer["models"]:
        cost = model["cost"]
        seconds = model["expected_seconds"]
        rows.append((model["model"], f"{model['requests']:,}", f"{model['prompt_tokens']:,}",
                     f"{model['output_tokens_max']:,}",
                     _money(cost["max"], cost["currency"]) if cost["priced"] else "no prices",
                     _money(cost["expected"], cost["currency"]) if cost["priced"] else "-",
                     f"{model['queued_ahead_requests']:,}",
                     clock_text(seconds) if seconds is not None else "unknown"))
    if rows:
        print_table(out, ("model", "requests", "prompt tokens", "output max", "cost max",
                          "cost expected", "queued ahead", "time"), rows)
    for model in answer["models"]:
        out.print(f"{safe(model['model'])}: prompt tokens {METHODS[model['prompt_tokens_method']]}"
                  + ("" if model["throughput"] else
                     "; no recent run to time it by"), highlight=False)
    seconds = answer["expected_seconds"]
    if seconds is not None:
        fits = "within" if answer["fits_completion_window"] else "NOT within"
        out.print(f"expected to finish in {clock_text(seconds)}, {fits} the "
                  f"{safe(answer['completion_window'])} window "
                  "(everything queued ahead first, at the recent pace)", highlight=False)
    if answer["cost"]["unpriced_models"]:
        out.print("no prices set for: " + ", ".join(safe(m) for m in
                                                    answer["cost"]["unpriced_models"]),
                  highlight=False)
    if not answer["valid"]:
        err.print(Text("this file would fail validation:", style="bold red"))
        _print_errors(err, answer["errors"])
    if kept:
        err.print(f"kept as {safe(kept)} (create a batch with input_file_id={safe(kept)})")
