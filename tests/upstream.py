"""A real upstream DNS server on loopback for the forwarding tests (SPEC §S5).

It exists so the forwarder is tested against sockets, not mocks: UDP and TCP on one
127.0.0.1 port, answering from zone-file lines (NXDOMAIN / NODATA with the closest SOA),
logging every query it receives, and with switches for the ways upstreams misbehave:
truncating UDP, garbling UDP, sending a spoofed reply with the wrong ID first, never
answering, holding replies until released, or relaying everything to another server
(which makes a forwarding loop when that server is the one under test). It runs on its
own event loop in a background thread, like the servers in conftest.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import dns.asyncquery
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

SPOOFED_ADDRESS = "203.0.113.66"


# The records most forwarding tests give their upstreams.
BIG_COUNT = 60  # A records of big.example.com: more than a 512-byte reply holds
EXAMPLE_ZONE = [
    "example.com. 300 IN A 192.0.2.1",
    "example.com. 300 IN AAAA 2001:db8::1",
    "example.com. 300 IN MX 10 mail.example.com.",
    "example.com. 3600 IN SOA ns.example.com. hostmaster.example.com. 1 7200 1800 86400 60",
    "www.example.com. 300 IN A 192.0.2.2",
    "httpbin.org. 120 IN A 192.0.2.80",
    "4.3.2.1.in-addr.arpa. 300 IN PTR host.example.com.",
    *(f"big.example.com. 300 IN A 198.51.100.{i}" for i in range(1, BIG_COUNT + 1)),
]


@dataclass(frozen=True)
class Seen:
    name: str  # as received, letter case kept, no trailing dot
    rdtype: str
    transport: str  # "udp" or "tcp"
    port: int = 0  # the asking socket's port


class FakeUpstream:
    """Answers ``records`` (zone-file lines with absolute names) on 127.0.0.1."""

    def __init__(self, records: Iterable[str] = ()) -> None:
        grouped: dict[tuple[str, int, str, str], list[str]] = {}
        for line in records:
            name, ttl, rdclass, rdtype, *rdata = line.split()
            grouped.setdefault((name.lower(), int(ttl), rdclass, rdtype), []).append(
                " ".join(rdata))
        self.rrsets: dict[tuple[dns.name.Name, int], dns.rrset.RRset] = {}
        for (owner, seconds, klass, kind), rdatas in grouped.items():
            rrset = dns.rrset.from_text_list(owner, seconds, klass, kind, rdatas)
            self.rrsets[(rrset.name, rrset.rdtype)] = rrset
        self.names = {name for name, _ in self.rrsets}
        self.seen: list[Seen] = []
        self.truncate_udp = False
        self.garble_udp = False
        self.spoof_first = False
        self.silent = False
        self.forward_to: tuple[str, int] | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._gate: asyncio.Event | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._started = threading.Event()
        self._thread.start()
        if not self._started.wait(timeout=30):
            raise RuntimeError("fake upstream did not start")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # ------------------------------------------------------------------- controls

    def names_seen(self) -> list[str]:
        return [s.name.lower() for s in list(self.seen)]

    def count(self, name: str, rdtype: str | None = None) -> int:
        name = name.rstrip(".").lower()
        return sum(1 for s in list(self.seen)
                   if s.name.lower() == name and (rdtype is None or s.rdtype == rdtype))

    def hold(self) -> None:
        """Keep every reply until ``release``."""
        self._call(self._make_gate)

    def release(self) -> None:
        self._call(lambda: self._gate.set() if self._gate is not None else None)

    def close(self) -> None:
        """Close both sockets (a dead upstream from now on) and stop the thread."""
        if self.loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()

    def _make_gate(self) -> None:
        self._gate = asyncio.Event()

    def _call(self, fn: Any) -> None:
        async def run() -> None:
            fn()
        asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout=10)

    # ------------------------------------------------------------------- serving

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._bind())
        self._started.set()
        self.loop.run_forever()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(10):
            transport, _proto = await loop.create_datagram_endpoint(
                lambda: _UDP(self), local_addr=(self.host, 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, self.host, port)
            except OSError:
                transport.close()
                continue
            self._udp, self.port = transport, port
            return
        raise RuntimeError("no free port for UDP and TCP")

    async def _close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        if self._gate is not None:
            self._gate.set()

    async def reply(self, data: bytes, transport: str, port: int = 0) -> list[bytes]:
        """The packets to send back for one query (none when silent)."""
        query = dns.message.from_wire(data)
        question = query.question[0]
        self.seen.append(Seen(question.name.to_text(omit_final_dot=True),
                              dns.rdatatype.to_text(question.rdtype), transport, port))
        if self._gate is not None:
            await self._gate.wait()
        if self.silent:
            return []
        if self.forward_to is not None:
            host, port = self.forward_to
            relayed = await dns.asyncquery.udp(query, host, port=port, timeout=10)
            return [relayed.to_wire()]
        response = self.answer(query)
        out = []
        if transport == "udp" and self.spoof_first:
            spoof = self.answer(query)
            spoof.id = (query.id + 1) % 65536
            spoof.answer = [dns.rrset.from_text(question.name, 300, "IN", "A",
                                                SPOOFED_ADDRESS)]
            out.append(spoof.to_wire())
        if transport == "udp" and self.garble_udp:
            out.append(response.to_wire()[:14] + b"\xff\xff\xff")
        elif transport == "udp" and self.truncate_udp:
            response.flags |= dns.flags.TC
            response.answer, response.authority, response.additional = [], [], []
            out.append(response.to_wire())
        else:
            out.append(response.to_wire())
        return out

    def answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        question = query.question[0]
        qname = question.name
        rrset = self.rrsets.get((qname, question.rdtype))
        if rrset is not None:
            response.answer.append(rrset)
            return response
        if qname not in self.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = self._closest_soa(qname)
        if soa is not None:
            response.authority.append(soa)
        return response

    def _closest_soa(self, name: dns.name.Name) -> dns.rrset.RRset | None:
        while True:
            soa = self.rrsets.get((name, dns.rdatatype.SOA))
            if soa is not None:
                return soa
            if name == dns.name.root:
                return None
            name = name.parent()

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                size = int.from_bytes(await reader.readexactly(2), "big")
                data = await reader.readexactly(size)
                peer = writer.get_extra_info("peername")
                for packet in await self.reply(data, "tcp", int(peer[1]) if peer else 0):
                    writer.write(len(packet).to_bytes(2, "big") + packet)
                await writer.drain()
        writer.close()


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        task = asyncio.ensure_future(self._answer(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        packets = await self.upstream.reply(data, "udp", int(addr[1]))
        if self.transport is None or self.transport.is_closing():
            return
        for packet in packets:
            self.transport.sendto(packet, addr)


def dead_address() -> str:
    """HOST:PORT of a loopback port that was just bound and closed: nothing listens."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"
