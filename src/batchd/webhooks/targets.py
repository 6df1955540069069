"""Which URLs batchd may call: http(s) only. With an allow-list (BATCHD_WEBHOOK_ALLOWED_HOSTS),
only the hosts on it, which the operator trusts wherever they resolve. Without one, any
public host: never loopback, private, link-local or reserved addresses (addresses.py), so that
a key cannot make batchd call addresses inside the network. A literal is checked here, at
registration; a name when each delivery connects, to the very address checked (pinned.py)."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from batchd.errors import InvalidRequest
from batchd.webhooks.addresses import is_public, literal_address


def allowed_hosts(setting: str | None) -> tuple[str, ...] | None:
    """`BATCHD_WEBHOOK_ALLOWED_HOSTS`: comma-separated hosts; `*.example.com` allows its
    subdomains. None: any host."""
    if not setting or not setting.strip():
        return None
    return tuple(h.strip().lower() for h in setting.split(",") if h.strip())


def host_allowed(host: str, allowed: tuple[str, ...] | None) -> bool:
    if allowed is None:
        return True
    host = host.lower().rstrip(".")
    return any(host == rule or (rule.startswith("*.") and host.endswith(rule[1:]))
               for rule in allowed)


def check_url(url: str, allowed: tuple[str, ...] | None) -> str:
    """The URL if batchd may call it; a 400 naming `url` otherwise."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        host, parts = None, None
    if parts is None or parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest("Invalid 'url': a webhook URL must be http:// or https:// with a "
                             "host.", code="invalid_value", param="url")
    if parts.username or parts.password:
        raise InvalidRequest("Invalid 'url': credentials in the URL are not allowed (the "
                             "signature authenticates batchd).", code="invalid_value",
                             param="url")
    try:
        httpx.URL(url)  # what the sender will parse
    except httpx.InvalidURL as exc:
        raise InvalidRequest(f"Invalid 'url': {exc}.", code="invalid_value",
                             param="url") from exc
    if not host_allowed(host, allowed):
        raise InvalidRequest(f"Invalid 'url': the host '{host}' is not on this server's "
                             "webhook allow-list (BATCHD_WEBHOOK_ALLOWED_HOSTS).",
                             code="host_not_allowed", param="url")
    if allowed is None and internal_literal(host):
        raise InvalidRequest(f"Invalid 'url': '{host}' is an address inside the network; "
                             "list it in BATCHD_WEBHOOK_ALLOWED_HOSTS to allow it.",
                             code="host_not_allowed", param="url")
    return url


def internal_literal(host: str) -> bool:
    """A host that plainly is not public: `localhost`, or an IP literal (in any form a
    resolver reads, `127.1` or `0x7f000001` too) that is not public. Names are checked again,
    resolved, when a delivery connects."""
    name = host.lower().rstrip(".")
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return True
    address = literal_address(host)
    return address is not None and not is_public(address)
