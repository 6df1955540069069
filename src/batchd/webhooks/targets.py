"""Which URLs batchd may call: http(s) only, and (when the operator sets an allow-list) only
the hosts on it, so that a key cannot make batchd call addresses inside the network."""

from __future__ import annotations

from urllib.parse import urlsplit

from batchd.errors import InvalidRequest


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
    if not host_allowed(host, allowed):
        raise InvalidRequest(f"Invalid 'url': the host '{host}' is not on this server's "
                             "webhook allow-list (BATCHD_WEBHOOK_ALLOWED_HOSTS).",
                             code="host_not_allowed", param="url")
    return url
