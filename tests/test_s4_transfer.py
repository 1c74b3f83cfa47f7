"""§S4.9 Zone transfers, end to end: AXFR and IXFR over real TCP sockets.

What a secondary, ``dig AXFR`` or dnspython sees: every record of a zone, the same as
``clusterdns records`` prints for it, framed in messages of at most 65,535 bytes that
begin and end with the SOA whose serial is the snapshot generation; IXFR answered in
full or, for a client holding the current serial, with the SOA alone; REFUSED with an
extended error over UDP, for a client the allow-list does not name, and beyond the
limit of transfers running at once. Clients pick their source address by binding
127.0.0.1 or 127.0.0.2 (every 127/8 address is local on Linux).

The larger tests serve a generated cluster (``bench.cluster``) whose forward zone takes
dozens of messages, so that a client can stop reading half-way: then a change is
published, the client goes away, or other clients ask their questions meanwhile.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import struct
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.zone
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.cluster import objects, write_json_list
from clusterdns.config import Config, ListenAddr, SourceSpec
from clusterdns.source.kube import KubeSource, Tuning
from clusterdns.transfer import MAX_TRANSFERS
from conftest import DEMO_CLUSTER, EXTRA_CLUSTER, RunningServer, serving_fake, wait_until
from fakekube import FakeKube

ROOT = Path(__file__).resolve().parent.parent
ZONES = ("cluster.local", "in-addr.arpa", "ip6.arpa")
ALLOWED = "127.0.0.1"
OTHER = "127.0.0.2"
EDE_PROHIBITED = 18
EDE_NOT_SUPPORTED = 21
TCP_MAX = 65535

Row = tuple[str, int, str, str]  # owner (lower case, absolute), TTL, type, rdata text


# ----------------------------------------------------------------------------- helpers


def canonical(owner: str, ttl: int, rdtype: str, rdata: str) -> Row:
    data = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), rdata)
    name = dns.name.from_text(owner).to_text().lower()
    return name, ttl, rdtype, data.to_text().lower()


def most_specific(name: str, zones: tuple[str, ...]) -> str | None:
    name = name.rstrip(".")
    inside = [z for z in zones if name == z or name.endswith("." + z)]
    return max(inside, key=len) if inside else None


def printed_records(tmp_path: Path, zones: tuple[str, ...], source: str) -> list[Row]:
    """What ``clusterdns records`` prints for this source and these zones."""
    cfg = tmp_path / "records.yaml"
    cfg.write_text(f"source: {source}\nzones: [{', '.join(zones)}]\npods: insecure\n",
                   encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "clusterdns", "records", "--config", str(cfg),
                          "--log-level", "warning"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    rows = []
    for line in out.splitlines():
        if line.startswith(";") or not line.strip():
            continue
        owner, ttl, _, rdtype, rdata = line.split(None, 4)
        rows.append(canonical(owner, int(ttl), rdtype, rdata))
    return rows


def of_zone(rows: list[Row], zone: str, zones: tuple[str, ...]) -> Counter[Row]:
    return Counter(r for r in rows if most_specific(r[0], zones) == zone)


def rows_of(messages: list[dns.message.Message]) -> list[Row]:
    return [canonical(rrset.name.to_text(), rrset.ttl, dns.rdatatype.to_text(rrset.rdtype),
                      rd.to_text())
            for msg in messages for rrset in msg.answer for rd in rrset]


def transfer_query(zone: str, rdtype: str = "AXFR", *, serial: int | None = None,
                   edns: bool = False, qid: int = 0x4242) -> bytes:
    q = dns.message.make_query(zone, rdtype, use_edns=0 if edns else False)
    q.id = qid
    if serial is not None:
        soa = dns.rdata.from_text("IN", "SOA", f"ns.{zone}. hostmaster.{zone}. {serial} 1 1 1 1")
        q.authority.append(q.find_rrset(q.authority, dns.name.from_text(zone),
                                        dns.rdataclass.IN, dns.rdatatype.SOA, create=True))
        q.authority[0].add(soa, 0)
    return q.to_wire()


def connect(server: RunningServer, source: str = ALLOWED, rcvbuf: int | None = None,
            timeout: float = 10.0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connecting, so the window starts small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect((server.host, server.port))
    return sock


def send(sock: socket.socket, query: bytes) -> None:
    sock.sendall(struct.pack("!H", len(query)) + query)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {size} bytes")
        buf += chunk
    return buf


def recv_message(sock: socket.socket) -> bytes:
    (length,) = struct.unpack("!H", recv_exactly(sock, 2))
    return recv_exactly(sock, length)


def soa_count(msg: dns.message.Message) -> int:
    return sum(len(r) for r in msg.answer if r.rdtype == dns.rdatatype.SOA)


def read_transfer(sock: socket.socket, soas: int = 0) -> list[bytes]:
    """Raw messages until the transfer ends: a refusal, an up-to-date SOA alone, or the
    second SOA (``soas``: how many were read already)."""
    out: list[bytes] = []
    while True:
        raw = recv_message(sock)
        out.append(raw)
        msg = dns.message.from_wire(raw, one_rr_per_rrset=True)
        soas += soa_count(msg)
        if msg.rcode() != dns.rcode.NOERROR or soas >= 2:
            break
        if len(out) == 1 and soas == 1 and sum(len(r) for r in msg.answer) == 1:
            break  # IXFR: up to date
    return out


def complete(raw: list[bytes]) -> bool:
    """A whole transfer: NOERROR, the SOA first and last and nowhere else."""
    messages = parsed(raw)
    return (all(m.rcode() == dns.rcode.NOERROR for m in messages)
            and sum(soa_count(m) for m in messages) == 2
            and messages[0].answer[0].rdtype == dns.rdatatype.SOA
            and messages[-1].answer[-1].rdtype == dns.rdatatype.SOA)


def transfer(server: RunningServer, zone: str, rdtype: str = "AXFR", *,
             source: str = ALLOWED, **kwargs: Any) -> list[bytes]:
    with connect(server, source) as sock:
        send(sock, transfer_query(zone, rdtype, **kwargs))
        return read_transfer(sock)


def parsed(raw: list[bytes]) -> list[dns.message.Message]:
    return [dns.message.from_wire(m, one_rr_per_rrset=True) for m in raw]


def ede(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(int(o.code), o.text or "") for o in msg.extended_errors()]


def refusal(server: RunningServer, zone: str, *, source: str = ALLOWED,
            rdtype: str = "AXFR") -> dns.message.Message:
    with connect(server, source) as sock:
        send(sock, transfer_query(zone, rdtype, edns=True))
        msg = dns.message.from_wire(recv_message(sock))
    assert msg.rcode() == dns.rcode.REFUSED, msg.to_text()
    assert not msg.answer
    return msg


def serial_of(server: RunningServer) -> int:
    serial: int = server.call(lambda: server.app.ref.get().serial)
    return serial


def running(server: RunningServer) -> int:
    count: int = server.call(lambda: server.app.handler.transfers_running)
    return count


def transfers_counted(server: RunningServer) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = server.call(
        lambda: dict(server.app.handler.stats.transfers))
    return counts


DEMO_SOURCE = f"file:{DEMO_CLUSTER},{EXTRA_CLUSTER}"


@pytest.fixture
def open_server(make_server: Callable[..., RunningServer]) -> RunningServer:
    """The demo cluster, transfers allowed to 127.0.0.1 only."""
    return make_server(transfer_to=(ALLOWED,))


@pytest.fixture(scope="module")
def big_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 services and 20,000 endpoints: a forward zone of about 50 messages."""
    return write_json_list(tmp_path_factory.mktemp("big") / "cluster.json", 1_000, 20_000)


@pytest.fixture
def big_server(make_server: Callable[..., RunningServer], big_dump: Path) -> RunningServer:
    return make_server(source=SourceSpec("file", (big_dump,)), transfer_to=(ALLOWED,))


# ----------------------------------------------------------------- the records it lists


@pytest.mark.parametrize("zone", ZONES)
def test_axfr_lists_every_record_of_the_zone_that_clusterdns_records_prints(
        open_server: RunningServer, tmp_path: Path, zone: str) -> None:
    expected = of_zone(printed_records(tmp_path, ZONES, DEMO_SOURCE), zone, ZONES)
    xfr = dns.query.xfr(open_server.host, zone, port=open_server.port, source=ALLOWED,
                        relativize=False, timeout=5)
    got = Counter(rows_of(list(xfr)))
    soa = next(r for r in expected if r[2] == "SOA")
    assert got[soa] == 2  # first and last
    got[soa] = 1
    assert got == expected
    assert sum(expected.values()) > (20 if zone != "ip6.arpa" else 3)


def test_a_zone_read_back_with_dnspython_holds_the_records_of_the_zone(
        open_server: RunningServer, tmp_path: Path) -> None:
    expected = of_zone(printed_records(tmp_path, ZONES, DEMO_SOURCE), "cluster.local", ZONES)
    zone = dns.zone.Zone("cluster.local", relativize=False)
    dns.query.inbound_xfr(open_server.host, zone, port=open_server.port, source=ALLOWED,
                          timeout=5)
    held = Counter(canonical(name.to_text(), rdataset.ttl,
                             dns.rdatatype.to_text(rdataset.rdtype), rd.to_text())
                   for name, rdataset in zone.iterate_rdatasets() for rd in rdataset)
    assert held == expected
    soa = zone.get_soa()
    assert soa.serial == serial_of(open_server)


def test_a_narrower_reverse_zone_is_a_zone_of_its_own(
        make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    zones = ("cluster.local", "in-addr.arpa", "10.in-addr.arpa", "ip6.arpa")
    server = make_server(zones=zones, transfer_to=(ALLOWED,))
    printed = printed_records(tmp_path, zones, DEMO_SOURCE)
    for zone in ("in-addr.arpa", "10.in-addr.arpa"):
        got = Counter(rows_of(parsed(transfer(server, zone))))
        soas = [r for r in got if r[2] == "SOA"]
        assert len(soas) == 1 and got[soas[0]] == 2
        got[soas[0]] = 1
        assert got == of_zone(printed, zone, zones), zone
    inner = Counter(rows_of(parsed(transfer(server, "10.in-addr.arpa"))))
    outer = Counter(rows_of(parsed(transfer(server, "in-addr.arpa"))))
    assert any(r[2] == "PTR" for r in inner)
    assert not any(r[0].endswith(".10.in-addr.arpa.") for r in outer)


def test_dig_axfr_prints_the_records_that_clusterdns_records_prints(
        open_server: RunningServer, tmp_path: Path) -> None:
    dig = shutil.which("dig")
    assert dig, "dig is a documented dependency of the test suite (dnsutils)"
    expected = of_zone(printed_records(tmp_path, ZONES, DEMO_SOURCE), "in-addr.arpa", ZONES)
    out = subprocess.run([dig, f"@{open_server.host}", "-p", str(open_server.port),
                          "-b", ALLOWED, "in-addr.arpa", "AXFR", "+nocmd", "+nostats"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    got: Counter[Row] = Counter()
    for line in out.splitlines():
        if line.strip() and not line.startswith(";"):
            owner, ttl, _, rdtype, rdata = line.split(None, 4)
            got[canonical(owner, int(ttl), rdtype, rdata)] += 1
    soa = next(r for r in got if r[2] == "SOA")
    assert got[soa] == 2
    got[soa] = 1
    assert got == expected


# ----------------------------------------------------------------------- the messages


def test_every_message_fits_tcp_framing_and_the_soa_with_the_generation_opens_and_closes(
        big_server: RunningServer) -> None:
    raw = transfer(big_server, "cluster.local", edns=True)
    messages = parsed(raw)
    assert len(messages) > 10
    assert all(len(m) <= TCP_MAX for m in raw)
    serial = serial_of(big_server)
    first, last = messages[0].answer[0], messages[-1].answer[-1]
    for rrset in (first, last):
        assert rrset.rdtype == dns.rdatatype.SOA
        soa = rrset[0]
        assert isinstance(soa, dns.rdtypes.ANY.SOA.SOA)
        assert soa.serial == serial
    assert sum(soa_count(m) for m in messages) == 2
    for index, msg in enumerate(messages):
        assert msg.id == 0x4242
        assert msg.flags & dns.flags.QR and msg.flags & dns.flags.AA
        assert msg.rcode() == dns.rcode.NOERROR
        assert len(msg.question) == (1 if index == 0 else 0)
        assert msg.edns == 0  # our OPT in every message, as the query had one
    rows = rows_of(messages)
    assert len(rows) == len(set(rows)) + 1  # nothing twice but the SOA
    assert sum(1 for r in rows if r[2] == "A") > 20_000  # endpoints and services


def test_ixfr_with_an_older_serial_gets_the_whole_zone(big_server: RunningServer) -> None:
    full = rows_of(parsed(transfer(big_server, "cluster.local")))
    older = serial_of(big_server) - 1
    incremental = parsed(transfer(big_server, "cluster.local", "IXFR", serial=older))
    assert incremental[0].question[0].rdtype == dns.rdatatype.IXFR
    assert Counter(rows_of(incremental)) == Counter(full)


def test_ixfr_with_the_current_serial_gets_the_soa_alone(open_server: RunningServer) -> None:
    serial = serial_of(open_server)
    messages = parsed(transfer(open_server, "cluster.local", "IXFR", serial=serial))
    assert len(messages) == 1
    (rrset,) = messages[0].answer
    assert rrset.rdtype == dns.rdatatype.SOA and len(rrset) == 1
    assert rrset[0].serial == serial
    # dnspython's own IXFR client agrees that there is nothing to do
    xfr = dns.query.xfr(open_server.host, "cluster.local", rdtype=dns.rdatatype.IXFR,
                        serial=serial, port=open_server.port, source=ALLOWED, timeout=5)
    assert sum(len(m.answer) for m in xfr) == 1
    assert transfers_counted(open_server)[("cluster.local", "up_to_date")] == 2


def test_ixfr_without_the_clients_soa_is_formerr(open_server: RunningServer) -> None:
    (raw,) = transfer(open_server, "cluster.local", "IXFR", edns=True)
    msg = dns.message.from_wire(raw)
    assert msg.rcode() == dns.rcode.FORMERR
    assert "RFC 1995" in ede(msg)[0][1]


# ------------------------------------------------------------------------- refusals


def test_a_transfer_over_udp_is_refused_with_an_extended_error(
        open_server: RunningServer) -> None:
    for rdtype in ("AXFR", "IXFR"):
        q = dns.message.make_query("cluster.local", rdtype, use_edns=0)
        msg = dns.query.udp(q, open_server.host, port=open_server.port, source=ALLOWED,
                            timeout=3)
        assert msg.rcode() == dns.rcode.REFUSED and not msg.answer
        assert ede(msg) == [(EDE_NOT_SUPPORTED, "zone transfer is only over TCP")]


def test_a_client_the_allow_list_does_not_name_is_refused_with_an_extended_error(
        open_server: RunningServer) -> None:
    for zone in ZONES:
        msg = refusal(open_server, zone, source=OTHER)
        assert ede(msg) == [(EDE_PROHIBITED,
                             f"zone transfer of {zone} is not allowed to {OTHER}")]
    # the allowed client still gets it: the refusal was not kept by the fast path
    assert complete(transfer(open_server, "cluster.local"))
    assert transfers_counted(open_server)[("in-addr.arpa", "refused")] == 1


def test_a_network_or_a_star_in_the_allow_list_lets_its_clients_in(
        make_server: Callable[..., RunningServer]) -> None:
    network = make_server(transfer_to=("127.0.0.2/31",))
    assert complete(transfer(network, "cluster.local", source=OTHER))
    refusal(network, "cluster.local", source=ALLOWED)
    anyone = make_server(transfer_to=("*",))
    for source in (ALLOWED, OTHER):
        assert complete(transfer(anyone, "in-addr.arpa", source=source))


def test_transfers_are_refused_when_off_and_for_zones_not_listed(
        make_server: Callable[..., RunningServer]) -> None:
    off = make_server()
    assert ede(refusal(off, "cluster.local")) == [(EDE_NOT_SUPPORTED,
                                                   "zone transfer is not enabled")]
    some = make_server(transfer_to=("*",), transfer_zones=("in-addr.arpa",))
    assert ede(refusal(some, "cluster.local")) == [(
        EDE_NOT_SUPPORTED,
        "zone transfer of cluster.local is not enabled; zones that transfer: in-addr.arpa")]
    below = ede(refusal(some, "svc.cluster.local"))
    assert below and "svc.cluster.local is not a zone" in below[0][1]
    assert complete(transfer(some, "in-addr.arpa"))


def test_before_the_first_sync_a_transfer_is_servfail_and_outside_our_zones_refused(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(publish=False, transfer_to=("*",))
    (raw,) = transfer(server, "cluster.local", edns=True)
    msg = dns.message.from_wire(raw)
    assert msg.rcode() == dns.rcode.SERVFAIL and not msg.answer
    assert ede(msg) == [(14, "not synced with the API server")]
    outside = refusal(server, "example.com")
    assert ede(outside) == [(20, "not authoritative for example.com")]


def test_transfers_are_counted_per_zone_and_result_in_the_metrics(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server(transfer_to=(ALLOWED,), metrics=ListenAddr("127.0.0.1", 0))
    assert complete(transfer(server, "cluster.local"))
    assert complete(transfer(server, "in-addr.arpa"))
    refusal(server, "cluster.local", source=OTHER)
    transfer(server, "cluster.local", "IXFR", serial=serial_of(server))
    host, port = server.app.http_bound["metrics"]
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counted = {(s.labels["zone"], s.labels["result"]): s.value
               for family in text_string_to_metric_families(text)
               if family.name == "clusterdns_transfers" for s in family.samples
               if s.name == "clusterdns_transfers_total"}
    assert counted == {("cluster.local", "complete"): 1, ("in-addr.arpa", "complete"): 1,
                       ("cluster.local", "refused"): 1, ("cluster.local", "up_to_date"): 1}


def test_a_reload_that_sets_transfer_to_turns_transfers_on(
        make_server: Callable[..., RunningServer]) -> None:
    server = make_server()
    refusal(server, "cluster.local")
    new = server.app.config.replace(transfer_to=(ALLOWED,))
    asyncio.run_coroutine_threadsafe(server.app.apply_config(new), server.loop).result(10)
    assert complete(transfer(server, "cluster.local"))


# ------------------------------------------------------------- slow and absent clients


def start_slow(server: RunningServer, zone: str = "cluster.local") -> tuple[socket.socket,
                                                                           bytes]:
    """A client that asks for a transfer, reads its first message and stops reading."""
    sock = connect(server, rcvbuf=4096)
    send(sock, transfer_query(zone))
    return sock, recv_message(sock)


def test_beyond_the_limit_of_running_transfers_one_more_is_refused_until_one_ends(
        big_server: RunningServer) -> None:
    slow = [start_slow(big_server)[0] for _ in range(MAX_TRANSFERS)]
    try:
        wait_until(lambda: running(big_server) == MAX_TRANSFERS, 5, "transfers running")
        msg = refusal(big_server, "cluster.local")
        assert ede(msg) == [(0, f"too many zone transfers running ({MAX_TRANSFERS}); "
                                "try again shortly")]
        # other queries are answered meanwhile, over UDP and TCP
        assert big_server.ask("svc-1.ns-1.svc.cluster.local").rcode() == dns.rcode.NOERROR
        assert big_server.ask("svc-2.ns-2.svc.cluster.local",
                              tcp=True).rcode() == dns.rcode.NOERROR
    finally:
        for sock in slow:
            sock.close()
    # a client that goes away stops its transfer and frees its place
    wait_until(lambda: running(big_server) == 0, 10, "the abandoned transfers to stop")
    assert transfers_counted(big_server)[("cluster.local", "aborted")] == MAX_TRANSFERS
    assert complete(transfer(big_server, "cluster.local"))


def test_a_slow_client_gets_the_whole_transfer_and_other_queries_on_its_connection_after(
        big_server: RunningServer) -> None:
    full = Counter(rows_of(parsed(transfer(big_server, "cluster.local"))))
    sock = connect(big_server, rcvbuf=4096)
    with sock:
        after = dns.message.make_query("svc-3.ns-3.svc.cluster.local", "A")
        after.id = 0x5151
        pipelined = [transfer_query("cluster.local"), after.to_wire()]
        sock.sendall(b"".join(struct.pack("!H", len(q)) + q for q in pipelined))
        messages = parsed(read_transfer(sock))
        reply = dns.message.from_wire(recv_message(sock))
    assert Counter(rows_of(messages)) == full
    assert reply.id == 0x5151 and reply.rcode() == dns.rcode.NOERROR


# ----------------------------------------------------- one generation, with the API server

BIG_TUNING = Tuning(page_size=500, slice_page_size=50, watch_timeout=30.0,
                    inactivity_timeout=5.0, request_timeout=10.0, backoff_base=0.05,
                    backoff_cap_early=0.5)


@pytest.fixture
def big_fake() -> Iterator[FakeKube]:
    with serving_fake(objects(1_000, 20_000)) as server:
        yield server


def addresses_of(rows: Counter[Row], owner: str) -> set[str]:
    return {r[3] for r in rows if r[0] == owner and r[2] == "A"}


def test_a_transfer_is_of_one_generation_while_changes_are_published_under_a_slow_client(
        make_server: Callable[..., RunningServer], big_fake: FakeKube,
        tmp_path: Path) -> None:
    def tuned(cfg: Config) -> KubeSource:
        return KubeSource(cfg, tuning=BIG_TUNING)

    server = make_server(source=SourceSpec("kubernetes"), transfer_to=(ALLOWED,),
                         kubeconfig=str(big_fake.write_kubeconfig(tmp_path / "kubeconfig")),
                         kube=tuned)
    wait_until(lambda: serial_of(server) > 0, 30, "the first sync")
    gone, added = "svc-7.ns-7.svc.cluster.local.", "svc-new.ns-0.svc.cluster.local."
    before = Counter(rows_of(parsed(transfer(server, "cluster.local"))))
    start = serial_of(server)

    sock, first = start_slow(server)
    with sock:
        wait_until(lambda: running(server) == 1, 5, "the transfer to start")
        big_fake.delete("Service", "ns-7", "svc-7")
        service = big_fake.get("Service", "ns-1", "svc-1")
        assert service is not None
        service["metadata"] = {"name": "svc-new", "namespace": "ns-0"}
        service["spec"]["clusterIP"] = service["spec"]["clusterIPs"][0] = "10.250.0.1"
        big_fake.apply(service)
        wait_until(lambda: serial_of(server) > start
                   and addresses_of(Counter(rows_of([server.ask(added)])), added)
                   == {"10.250.0.1"}, 10, "the change to be published")
        assert running(server) == 1, "the transfer ended before the change was published"
        rest = read_transfer(sock, soas=1)
    during = Counter(rows_of(parsed([first, *rest])))
    assert during == before
    serials = {r[3].split()[2] for r in during if r[2] == "SOA"}
    assert serials == {str(start)}
    assert addresses_of(during, gone) and not addresses_of(during, added)

    after = Counter(rows_of(parsed(transfer(server, "cluster.local"))))
    assert addresses_of(after, added) == {"10.250.0.1"} and not addresses_of(after, gone)
    assert {r[3].split()[2] for r in after if r[2] == "SOA"} == {str(serial_of(server))}
