"""§S3 CNAME chains inside our zones (ExternalName services pointing at each other).

A chain is followed for the client; one longer than the server's limit (16, BIND's) is
answered with the part followed so far, NOERROR and AA, as authoritative servers do, so
the client can go on from its last target; a loop ends the chain, and no CNAME appears
twice in the answer (RFC 2181 §5). Both say why in an extended error.
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from clusterdns.config import SourceSpec
from clusterdns.resolve import MAX_CHAIN
from conftest import RunningServer, _start, _stop, demo_config, rrset_texts

LINKS = 20  # c0 -> c1 -> ... -> c19 -> c20 (a ClusterIP service)
LOOP = 3  # l0 -> l1 -> l2 -> l0


def external(name: str, target: str) -> str:
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: chain}}
spec: {{type: ExternalName, externalName: {target}.chain.svc.cluster.local}}
"""


def chain_dump() -> str:
    out = "apiVersion: v1\nkind: Namespace\nmetadata: {name: chain}\n"
    out += "".join(external(f"c{i}", f"c{i + 1}") for i in range(LINKS))
    out += """---
apiVersion: v1
kind: Service
metadata: {name: c20, namespace: chain}
spec: {clusterIP: 10.96.9.9, ports: [{port: 80}]}
"""
    out += "".join(external(f"l{i}", f"l{(i + 1) % LOOP}") for i in range(LOOP))
    out += external("self", "self")
    return out


@pytest.fixture(scope="module")
def chains(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    path = tmp_path_factory.mktemp("chains") / "chains.yaml"
    path.write_text(chain_dump())
    handle = _start(demo_config(source=SourceSpec("file", (path,))))
    yield handle.server
    _stop(handle)


def cname_owners(reply: dns.message.Message) -> list[str]:
    return [line.split()[0] for line in rrset_texts(reply) if " CNAME " in line]


def extended_errors(reply: dns.message.Message) -> list[str]:
    return [opt.text or "" for opt in reply.options if isinstance(opt, dns.edns.EDEOption)]


def name(label: str) -> str:
    return f"{label}.chain.svc.cluster.local."


@pytest.mark.parametrize("tcp", [False, True])
def test_s3_a_chain_within_the_limit_is_followed_to_the_address(
        chains: RunningServer, tcp: bool) -> None:
    start = LINKS - MAX_CHAIN + 1  # 16 CNAMEs, then the address
    for _ in range(2):  # the full path, then the fast path
        reply = chains.ask(name(f"c{start}"), "A", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        assert cname_owners(reply) == [name(f"c{i}") for i in range(start, LINKS)]
        assert rrset_texts(reply)[-1] == f"{name('c20')} 5 IN A 10.96.9.9"


@pytest.mark.parametrize("tcp", [False, True])
def test_s3_a_chain_longer_than_the_limit_is_answered_as_far_as_followed(
        chains: RunningServer, tcp: bool) -> None:
    for _ in range(2):
        reply = chains.ask(name("c0"), "A", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        assert cname_owners(reply) == [name(f"c{i}") for i in range(MAX_CHAIN)]
        assert not [line for line in rrset_texts(reply) if " A " in line]
        assert extended_errors(reply) == [
            f"CNAME chain longer than {MAX_CHAIN}: followed that far"]
    # The client goes on from the last target and gets the rest.
    rest = chains.ask(name(f"c{MAX_CHAIN}"), "A", tcp=tcp)
    assert rrset_texts(rest)[-1] == f"{name('c20')} 5 IN A 10.96.9.9"


@pytest.mark.parametrize("tcp", [False, True])
@pytest.mark.parametrize(("start", "owners"), [
    ("l0", ["l0", "l1", "l2"]), ("l1", ["l1", "l2", "l0"]), ("self", ["self"])])
def test_s3_a_cname_loop_ends_the_chain_with_each_cname_once(
        chains: RunningServer, tcp: bool, start: str, owners: list[str]) -> None:
    for rdtype in ("A", "AAAA", "SRV"):
        reply = chains.ask(name(start), rdtype, tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA
        assert cname_owners(reply) == [name(o) for o in owners]
        texts = rrset_texts(reply)
        assert len(texts) == len(set(texts)) == len(owners)
        assert extended_errors(reply) == [f"CNAME loop at {name(start)[:-1]}"]


def test_s3_a_cname_query_in_a_loop_returns_exactly_that_cname(chains: RunningServer) -> None:
    reply = chains.ask(name("l0"), "CNAME")
    assert rrset_texts(reply) == [
        f"{name('l0')} 5 IN CNAME {name('l1')}"]
