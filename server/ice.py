"""Keeping WebRTC on the loopback interface, for tests and single-machine setups.

aioice gathers host candidates on every interface except loopback, so even a browser on the same machine talks
to the machine's LAN address. With loopback-only ICE, this process offers 127.0.0.1 alone and ignores remote
candidates elsewhere: no packet is addressed outside 127.0.0.0/8.
"""

from __future__ import annotations

import ipaddress

import aioice.ice

_original_add_remote_candidate = aioice.ice.Connection.add_remote_candidate


def restrict_ice_to_loopback() -> None:
    """Process-wide: gather only 127.0.0.1 and drop remote candidates that are not loopback addresses."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

    async def add_loopback_candidate(self, remote_candidate) -> None:
        if remote_candidate is not None and not _is_loopback(remote_candidate.host):
            return
        await _original_add_remote_candidate(self, remote_candidate)

    aioice.ice.Connection.add_remote_candidate = add_loopback_candidate


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an mDNS name (*.local) or other hostname: not known to be loopback
        return False
