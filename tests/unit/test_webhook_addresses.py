"""Which addresses a webhook may reach without an allow-list: IPv4 written the ways a resolver
reads it, and IPv6 forms that carry an IPv4 address, judged by that address."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address

import pytest

from batchd.errors import InvalidRequest
from batchd.webhooks.addresses import inet_aton, is_public, literal_address
from batchd.webhooks.targets import check_url


@pytest.mark.parametrize(("text", "address"), [
    ("127.0.0.1", "127.0.0.1"), ("127.1", "127.0.0.1"), ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"), ("0X7F.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
    ("0177.1", "127.0.0.1"), ("10.1", "10.0.0.1"), ("192.168.257", "192.168.1.1"),
    ("0", "0.0.0.0"), ("0x", "0.0.0.0"), ("134744072", "8.8.8.8"), ("8.8.2056", "8.8.8.8"),
])
def test_ipv4_is_read_as_inet_aton_reads_it(text: str, address: str) -> None:
    assert inet_aton(text) == IPv4Address(address)


@pytest.mark.parametrize("text", [
    "", "256.1.1.1", "1.2.3.256", "1.2.65536", "4294967296", "1.2.3.4.5", "08.0.0.1",
    "0x7g.0.0.1", "1..2", "example.com", "1e3", "-1.2.3.4", "127.0.0.1.",
])
def test_what_is_not_ipv4(text: str) -> None:
    assert inet_aton(text) is None


def test_a_url_host_with_a_trailing_dot_or_brackets_is_still_a_literal() -> None:
    assert literal_address("127.0.0.1.") == IPv4Address("127.0.0.1")
    assert literal_address("[::1]") == ip_address("::1")
    assert literal_address("hooks.example.com") is None


@pytest.mark.parametrize(("address", "public"), [
    ("8.8.8.8", True), ("127.0.0.1", False), ("10.0.0.1", False), ("169.254.169.254", False),
    ("2606:4700::1111", True), ("::1", False), ("fe80::1", False), ("fc00::1", False),
    # NAT64 (RFC 6052): the IPv4 address in the last 32 bits
    ("64:ff9b::7f00:1", False), ("64:ff9b::a9fe:a9fe", False), ("64:ff9b::808:808", True),
    # local-use NAT64 (RFC 8215): where the IPv4 sits is the network's own choice
    ("64:ff9b:1::808:808", False), ("64:ff9b:1:7f00:1::", False),
    # 6to4
    ("2002:7f00:1::1", False), ("2002:a00:1::1", False), ("2002:808:808::1", True),
    # IPv4-mapped, -compatible, -translated
    ("::ffff:127.0.0.1", False), ("::ffff:8.8.8.8", True), ("::127.0.0.1", False),
    ("::10.0.0.1", False), ("::8.8.8.8", True), ("::ffff:0:7f00:1", False),
    ("::ffff:0:808:808", True),
    # Teredo: server 65.54.227.120; the client is stored inverted
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", False),  # client 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", True),  # client 8.8.8.8
    ("2001:0:c000:2ff:8000:63bf:f7f7:f7f7", False),  # server 192.0.2.255
])
def test_ipv6_that_carries_ipv4_is_judged_by_the_ipv4(address: str, public: bool) -> None:
    assert is_public(ip_address(address)) is public


@pytest.mark.parametrize("host", [
    "127.1", "2130706433", "0x7f000001", "127.0.0.1.", "0x7f.1", "0177.1", "10.1",
    "3232235777", "[64:ff9b::7f00:1]", "[64:ff9b::a00:1]", "[2002:7f00:1::1]",
    "[::ffff:127.0.0.1]", "[::127.0.0.1]", "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
    "[64:ff9b:1::1]", "LOCALHOST.", "a.localhost",
])
def test_addresses_in_disguise_are_refused_at_registration(host: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_url(f"http://{host}:8080/hooks", None)
    assert refused.value.param == "url" and refused.value.code in ("host_not_allowed",
                                                                   "invalid_value")


@pytest.mark.parametrize("host", ["hooks.example.com", "8.8.8.8", "134744072",
                                  "[2606:4700::1111]", "[64:ff9b::808:808]"])
def test_public_hosts_are_accepted(host: str) -> None:
    assert check_url(f"https://{host}/hooks", None) == f"https://{host}/hooks"


def test_an_allow_list_decides_alone() -> None:
    assert check_url("http://hooks.internal/x", ("hooks.internal",))
    with pytest.raises(InvalidRequest):
        check_url("http://2130706433/x", ("127.0.0.1",))
