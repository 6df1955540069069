"""Which IP addresses a webhook may reach without an allow-list: public ones only.

`ipaddress.is_global` alone is not enough. IPv6 has forms that carry an IPv4 address and reach
it through a translator or tunnel (NAT64, 6to4, Teredo, IPv4-mapped and -compatible): they are
judged by the IPv4 address they carry. And a resolver reads IPv4 the way `inet_aton` does, so
`127.1`, `2130706433`, `0x7f000001` and `0177.0.0.1` all mean 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv6Address, IPv6Network

IPAddress = IPv4Address | IPv6Address

_NAT64 = IPv6Network("64:ff9b::/96")  # RFC 6052: the IPv4 address in the last 32 bits
# RFC 8215, for one network's own translators: where the IPv4 address sits depends on a
# prefix length only that network knows, so it is never taken for public.
_LOCAL_NAT64 = IPv6Network("64:ff9b:1::/48")
_COMPATIBLE = IPv6Network("::/96")  # RFC 4291's deprecated IPv4-compatible form
_TRANSLATED = IPv6Network("::ffff:0:0:0/96")  # RFC 2765's IPv4-translated form


def embedded_ipv4(address: IPv6Address) -> tuple[IPv4Address, ...] | None:
    """The IPv4 addresses an IPv6 address leads to (None: it carries none)."""
    if address.ipv4_mapped is not None:
        return (address.ipv4_mapped,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:  # (server, client): a relay reaches both
        return address.teredo
    if address in _NAT64 or address in _TRANSLATED or (
            address in _COMPATIBLE and int(address) > 1):  # `::` and `::1` are not IPv4
        return (IPv4Address(int(address) & 0xFFFFFFFF),)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether a webhook may call `address` when no allow-list is set."""
    if isinstance(address, IPv6Address):
        if address.scope_id or address in _LOCAL_NAT64:
            return False
        carried = embedded_ipv4(address)
        if carried is not None:
            return all(v4.is_global for v4 in carried)
    return address.is_global


def literal_address(host: str) -> IPAddress | None:
    """The address a URL's host names when it is an IP literal, read as a resolver reads it
    (None: it is a name)."""
    host = host.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return inet_aton(host.removesuffix("."))


def inet_aton(text: str) -> IPv4Address | None:
    """IPv4 as BSD's `inet_aton` (and so getaddrinfo) reads it: one to four parts, each
    decimal, octal (a leading 0) or hexadecimal (0x); the last part fills the bytes that are
    left. `127.1` is 127.0.0.1; `2130706433` is too."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        if part[:2].lower() == "0x":
            digits, base = part[2:], 16
        elif len(part) > 1 and part.startswith("0"):
            digits, base = part[1:], 8
        else:
            digits, base = part, 10
        if not part or (digits and not _all_digits(digits, base)):
            return None
        values.append(int(digits, base) if digits else 0)
    *leading, last = values
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return IPv4Address(number)


def _all_digits(text: str, base: int) -> bool:
    allowed = "0123456789abcdef"[:base]
    return all(c in allowed for c in text.lower())
