"""Who the Triton workers are now: the A/AAAA records of a DNS name (DDPM_TRITON_DNS), asked again every
few seconds by `Membership`, beside the fixed list of DDPM_TRITON_URLS.

In Kubernetes the name is a headless Service's, whose records are its ready pods. DNS needs no RBAC and
no cluster client, and every answer is the whole membership: a periodic full re-list by construction. A
watch can miss a DELETE across a reconnect (vLLM production-stack's router kept a vanished pod for 22
hours that way); a poll cannot. A failed lookup keeps the membership it had, since a DNS hiccup must not
drain a healthy fleet; a name with no records (NXDOMAIN, no answer) means no workers.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Protocol

from service.backends.base import BackendStartupError

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_S = 2.0


class DiscoveryError(Exception):
    """The lookup failed (timeout, refused, SERVFAIL): the members are unknown, not none."""


class DnsMembers:
    """`name:port` -> the sorted gRPC URLs `address:port` of its records."""

    def __init__(self, name_port: str, nameserver: str | None = None, timeout: float = RESOLVE_TIMEOUT_S):
        try:
            import dns.resolver
        except ImportError as e:
            raise BackendStartupError(
                f"DNS discovery needs dnspython: pip install 'ddpm-serve[triton]' ({e})"
            ) from e
        self.name, _, port = name_port.rpartition(":")
        self.port = int(port)
        self.description = name_port if nameserver is None else f"{name_port} (nameserver {nameserver})"
        # configure=True reads /etc/resolv.conf (a pod's cluster DNS and its search domains); an explicit
        # nameserver replaces it, e.g. a DNS server on loopback in tests.
        self._resolver = dns.resolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            host, _, ns_port = nameserver.rpartition(":")
            self._resolver.nameservers = [socket.gethostbyname(host.strip("[]"))]
            self._resolver.port = int(ns_port)
        self._resolver.lifetime = timeout

    def resolve(self) -> list[str]:
        """Blocking (the backend calls it in a thread); raises DiscoveryError when the lookup failed."""
        import dns.exception
        import dns.resolver

        addresses: set[str] = set()
        for rdtype in ("A", "AAAA"):
            try:
                answer = self._resolver.resolve(self.name, rdtype, search=True)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as e:
                raise DiscoveryError(f"resolving {self.description} failed: {e}") from e
            addresses.update(record.address for record in answer)
        return sorted(f"[{a}]:{self.port}" if ":" in a else f"{a}:{self.port}" for a in addresses)


class Source(Protocol):
    description: str

    def resolve(self) -> list[str]: ...


class _Backend(Protocol):
    def set_discovered(self, urls: set[str]) -> None: ...

    def count_resolve(self, outcome: str) -> None: ...


class Membership:
    """Asks `source` every `interval` seconds and hands the backend the discovered set."""

    def __init__(self, backend: _Backend, source: Source, interval: float) -> None:
        self.backend = backend
        self.source = source
        self.interval = interval

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.refresh()
            except Exception:  # the loop must survive anything one round does
                log.exception("Triton discovery failed")

    async def refresh(self) -> bool:
        """One lookup; False when it failed (the membership is then left as it was)."""
        try:
            urls = await asyncio.to_thread(self.source.resolve)
        except DiscoveryError as e:
            self.backend.count_resolve("failed")
            log.warning("%s; keeping the Triton workers known so far", e)
            return False
        self.backend.count_resolve("ok")
        self.backend.set_discovered(set(urls))
        return True
