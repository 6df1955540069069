"""The webhook client connects to the address it checked, resolving a name once per
connection, while the request keeps the name: in the Host header, in TLS's SNI and in the
certificate check."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import httpx
import pytest

from batchd.webhooks.addresses import IPAddress
from batchd.webhooks.pinned import AddressNotPublic, PinnedBackend, PinnedTransport
from batchd.webhooks.sender import failure_reason
from tests.support.webhook_receiver import Receiver, receiving


class Resolver:
    """Answers each name with the addresses given for it; counts the questions."""

    def __init__(self, **answers: list[str]) -> None:
        self.answers = {name.replace("_", "."): v for name, v in answers.items()}
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.asked.append(host)
        return [ip_address(a) for a in self.answers[host]]


def certificate(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name}",
                    "-addext", f"subjectAltName=DNS:{name}"], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def tls_receiver(tmp_path: Path) -> Iterator[tuple[Receiver, list[str | None], Path]]:
    """An HTTPS receiver on 127.0.0.1 with a certificate for hooks.test; the SNI names it
    was sent; the certificate, for the client to trust."""
    cert, key = certificate(tmp_path, "hooks.test")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    with receiving(tls=context) as receiver:
        yield receiver, names, cert


def client(resolver: Resolver, *, checking: bool, cafile: Path | None = None
           ) -> httpx.AsyncClient:
    backend = PinnedBackend(checking=lambda: checking, resolver=resolver)
    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    return httpx.AsyncClient(transport=PinnedTransport(backend, ssl_context=context),
                             timeout=5)


async def test_the_name_is_kept_for_host_sni_and_the_certificate(
    tls_receiver: tuple[Receiver, list[str | None], Path],
) -> None:
    receiver, names, cert = tls_receiver
    resolver = Resolver(hooks_test=["127.0.0.1"])
    async with client(resolver, checking=False, cafile=cert) as http:
        answer = await http.post(f"https://hooks.test:{receiver.port}/hooks", content=b"{}")
    assert answer.status_code == 200
    assert names == ["hooks.test"] and resolver.asked == ["hooks.test"]
    assert receiver.received[0].headers["Host"] == f"hooks.test:{receiver.port}"


async def test_a_certificate_for_another_name_is_refused(
    tls_receiver: tuple[Receiver, list[str | None], Path], tmp_path: Path,
) -> None:
    receiver, _, cert = tls_receiver
    resolver = Resolver(other_test=["127.0.0.1"])
    async with client(resolver, checking=False, cafile=cert) as http:
        with pytest.raises(httpx.ConnectError) as refused:
            await http.post(f"https://other.test:{receiver.port}/hooks", content=b"{}")
    assert receiver.received == []
    assert failure_reason(refused.value).startswith("TLS: the certificate was refused")


@pytest.mark.parametrize("answer", [["127.0.0.1"], ["8.8.8.8", "10.0.0.7"],
                                    ["64:ff9b::a00:7"], ["2002:a00:7::1"]])
async def test_a_name_with_any_address_that_is_not_public_is_refused(
    answer: list[str],
) -> None:
    resolver = Resolver(hooks_test=answer)
    async with client(resolver, checking=True) as http:
        with pytest.raises(AddressNotPublic) as refused:
            await http.post("http://hooks.test:9/hooks", content=b"{}")
    assert resolver.asked == ["hooks.test"]
    assert str(refused.value) == "the address is not public"  # never the addresses


async def test_each_connection_is_checked_against_what_it_connects_to() -> None:
    """The name answers public, then loopback: the first connection goes to the public
    address (nothing listens there), the second is refused; the receiver on loopback is never
    reached."""
    with receiving() as receiver:
        resolver = Resolver(rebind_test=["8.8.8.8"])
        async with client(resolver, checking=True) as http:
            url = f"http://rebind.test:{receiver.port}/hooks"
            with pytest.raises((httpx.ConnectError, httpx.ConnectTimeout)):
                await http.post(url, content=b"{}", timeout=1)
            resolver.answers["rebind.test"] = ["127.0.0.1"]
            with pytest.raises(AddressNotPublic):
                await http.post(url, content=b"{}")
    assert receiver.received == [] and resolver.asked == ["rebind.test"] * 2


async def test_connection_errors_name_no_address() -> None:
    resolver = Resolver(inside_test=["127.0.0.1"])
    async with client(resolver, checking=False) as http:
        with pytest.raises(httpx.ConnectError) as failed:
            await http.post("http://inside.test:9/hooks", content=b"{}")
    reason = failure_reason(failed.value)
    assert reason == "could not connect (Connection refused)" and "127.0.0.1" not in reason
