"""A test network on one machine: hosts in network namespaces on a bridge, whose links can be
cut (for the multi-host scale-out tests; needs root and `ip`)."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path


class Host:
    """One test host: a network namespace with one address on the test network."""

    def __init__(self, network: Network, name: str, address: str, veth: str) -> None:
        self.network, self.name, self.address, self.veth = network, name, address, veth
        self.netns = f"{network.tag}-{name}"

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args]

    def popen(self, args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(self.command(args), stdout=out, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)

    def cut(self) -> None:
        """A partition: packets to and from this host are dropped silently."""
        subprocess.run(["ip", "link", "set", self.veth, "down"], check=True)

    def reconnect(self) -> None:
        subprocess.run(["ip", "link", "set", self.veth, "up"], check=True)


class Network:
    """Hosts on one machine: a bridge in the root namespace (the test itself sits at .1) and
    one namespace per host, joined by veth pairs."""

    def __init__(self) -> None:
        self.tag = f"bd{secrets.token_hex(2)}"
        self.subnet = f"10.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}"
        self.bridge = f"{self.tag}br"
        self.hosts: list[Host] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def add_host(self, name: str) -> Host:
        n = len(self.hosts) + 2
        host = Host(self, name, f"{self.subnet}.{n}", f"{self.tag}v{n}")
        _ip("netns", "add", host.netns)
        inside = f"{self.tag}i{n}"
        _ip("link", "add", host.veth, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", host.netns)
        _ip("link", "set", host.veth, "master", self.bridge)
        _ip("link", "set", host.veth, "up")
        for args in (("addr", "add", f"{host.address}/24", "dev", inside),
                     ("link", "set", inside, "up"), ("link", "set", "lo", "up")):
            _ip("netns", "exec", host.netns, "ip", *args)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "link", "del", host.veth], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)
