"""The writer's state: the current objects, and from them the next snapshot.

Why this module exists: it is where the record rules (``records``, SPEC §S2) meet the
objects as they change. A ``Builder`` holds the current Services, EndpointSlices,
Namespaces and Pods with the reference counts that say which namespaces and pod
addresses exist; ``apply`` and ``delete`` take one changed object at a time and mark
what it affects; ``publish`` computes again only the contributions of what changed and
hands their names to the ``ClaimBook``. When a slice only moved endpoints, just the
service-wide names and those endpoints' names are computed again (one endpoint of a
100-endpoint headless service: 2 names, not 200). ``build`` is the from-scratch path
through the same claims.

ServiceImports and their imported slices go through the same claims, under the
multicluster zones (``clusterdns.multicluster`` has their rules): a change to one
recomputes that import's names, all of them, and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from clusterdns import multicluster, names, records
from clusterdns.config import Config, PodsMode
from clusterdns.objects import (
    Cluster,
    EndpointSlice,
    KubeObject,
    Namespace,
    Pod,
    Service,
    ServiceImport,
    ServiceKind,
)
from clusterdns.records import Record, RRType
from clusterdns.snapshot.claims import KEEP, ClaimBook, Claims
from clusterdns.snapshot.index import Compact, CowIndex, NodeStore, shards_for
from clusterdns.snapshot.model import ServiceInfo, Snapshot, service_info
from clusterdns.snapshot.nodes import MCS_OWNER, NAME, ZONE_OWNER, Owner, record_values
from clusterdns.snapshot.pods import NO_PODS, PodAddresses, PodIndex, address_key

Key = tuple[str, str]  # (namespace, name); namespaces use ("", name)
_Item = tuple[tuple[str, ...], str, str]  # a ready endpoint: (addresses, hostname, pod name)


def build(cluster: Cluster, config: Config, serial: int) -> Snapshot:
    """Every record the cluster implies under the configured zones (from scratch)."""
    return Builder(config, cluster).publish(serial)


def _reverse_name(ip: str) -> str:
    if ":" in ip:
        return names.reverse_name(ip)
    a, b, c, d = ip.split(".")
    return f"{d}.{c}.{b}.{a}.in-addr.arpa"


class Builder:
    """The writer's state: current objects, per-owner contributions, the name index.

    ``Builder(config, cluster)`` takes in a whole cluster; ``apply`` takes one changed
    object (or a deletion) at a time; ``publish(serial)`` settles what changed and
    returns an immutable ``Snapshot``. Not thread-safe: one writer at a time.
    """

    def __init__(self, config: Config, cluster: Cluster | None = None) -> None:
        cluster = cluster or Cluster()
        self.config = config
        self.ttl = config.ttl
        self.forward = tuple(z for z in config.zones if not names.is_reverse_zone(z))
        self.reverse = tuple(z for z in config.zones if names.is_reverse_zone(z))
        # Whole reverse trees served: every PTR name of that family is in a zone.
        self.all_v4 = "in-addr.arpa" in self.reverse
        self.all_v6 = "ip6.arpa" in self.reverse
        # Zones answered from ServiceImports (SPEC §S7); none: imports make no names.
        self.multicluster = config.multicluster_zones
        every_zone = (*config.zones, *self.multicluster)
        self.zones_long_first = tuple(sorted(every_zone, key=len, reverse=True))
        self.zone_set = frozenset(every_zone)
        self.domain = config.cluster_domain
        self.use_pod_names = config.endpoint_pod_names
        self.allowed = config.namespaces
        self.services: dict[Key, Service] = {}
        self.slices: dict[Key, EndpointSlice] = {}
        self.slices_by_svc: dict[Key, dict[str, EndpointSlice]] = {}
        self.pods: dict[Key, Pod] = {}
        self.namespace_objects: set[str] = set()
        self.ns_refs: dict[str, int] = {}  # namespace -> objects that make it exist
        self.pod_ip_refs: dict[tuple[str, str], int] = {}
        self.pod_ip_index = CowIndex(shards_for(len(cluster.pods)))  # of pod_ip_refs' keys
        # Which pod holds each address (autopath must know who asks); kept only for it.
        self.pod_index = PodIndex(len(cluster.pods)) if config.autopath else None
        self.imports: dict[Key, ServiceImport] = {}
        # (namespace, import name) -> slice name -> a slice imported for it
        self.imported: dict[Key, dict[str, EndpointSlice]] = {}
        self._dirty_imports: set[Key] = set()
        self.import_infos = CowIndex(shards_for(len(cluster.service_imports)))
        size = len(cluster.services) * 4 + sum(s.endpoint_count for s in cluster.endpoint_slices)
        self.index = NodeStore(shards_for(2 * size),
                                Compact(self.ttl, self.forward, self.domain))
        self.book = ClaimBook(self.ttl, self.zone_set, self.index)
        self.infos = CowIndex(shards_for(len(cluster.services)))
        self._dirty_services: set[Key] = set()
        # Dirty services whose only change is endpoints moving inside slices they already
        # had: the (addresses, hostname, pod name) items that appeared or went. A dirty
        # service without an entry here is recomputed whole.
        self._touched: dict[Key, set[_Item]] = {}
        self.examined = 0  # names the last publish computed (tests: cost follows change)
        self._dirty_namespaces: set[str] = set()
        self._pods_changed = True
        self._namespaces: frozenset[str] = frozenset()
        self._pod_ips: PodAddresses = PodAddresses({}, frozenset())
        self.replaced = 0  # names the last publish wrote or removed (tests and benches)
        for ns in cluster.namespaces:
            self.apply(ns)
        for svc in cluster.services:
            self.apply(svc)
        for sl in cluster.endpoint_slices:
            self.apply(sl)
        for pod in cluster.pods:
            self.apply(pod)
        for imp in cluster.service_imports:
            self.apply(imp)

    # ----------------------------------------------------------------- object deltas

    def _exposed(self, ns: str) -> bool:
        return not self.allowed or ns in self.allowed

    def _ns_ref(self, ns: str, delta: int) -> None:
        before = self.ns_refs.get(ns, 0)
        after = before + delta
        if after:
            self.ns_refs[ns] = after
        else:
            del self.ns_refs[ns]
        if (before == 0) != (after == 0):
            self._dirty_namespaces.add(ns)

    def apply(self, obj: KubeObject) -> None:
        """ADDED or MODIFIED: ``obj`` replaces the object with its key."""
        if isinstance(obj, Service):
            key = (obj.namespace, obj.name)
            if key not in self.services:
                self._ns_ref(obj.namespace, 1)
            self.services[key] = obj
            self._recompute(key)
        elif isinstance(obj, EndpointSlice):
            key = (obj.namespace, obj.name)
            old = self.slices.get(key)
            if obj.import_name or (old is not None and old.import_name):
                self._import_slice(old, obj)
            # A slice imported for a ServiceImport only has the service "", which no
            # Service has: it makes no name in the cluster zones, so it joins no
            # service's slices and changes no service's contribution.
            owner = (obj.namespace, obj.service)
            if old is not None and old.service == obj.service and \
                    old.ports == obj.ports and old.address_type == obj.address_type:
                self.slices[key] = obj
                if obj.service:
                    self._endpoints_moved(owner, old, obj)
                    self.slices_by_svc[owner][obj.name] = obj
                return
            if old is not None:
                self._unlink_slice(old)
            else:
                self._ns_ref(obj.namespace, 1)
            self.slices[key] = obj
            if obj.service:
                self.slices_by_svc.setdefault(owner, {})[obj.name] = obj
                self._recompute(owner)
        elif isinstance(obj, Namespace):
            if obj.name not in self.namespace_objects:
                self.namespace_objects.add(obj.name)
                self._ns_ref(obj.name, 1)
        elif isinstance(obj, ServiceImport):
            key = (obj.namespace, obj.name)
            if key not in self.imports:
                self._ns_ref(obj.namespace, 1)
            self.imports[key] = obj
            self._dirty_imports.add(key)
        else:
            key = (obj.namespace, obj.name)
            if key in self.pods:
                self._unlink_pod(self.pods[key])
            else:
                self._ns_ref(obj.namespace, 1)
            self.pods[key] = obj
            if self.pod_index is not None:
                self.pod_index.add(obj)
            for ip in obj.ips:
                held = self.pod_ip_refs.get((obj.namespace, ip), 0)
                if not held:
                    self.pod_ip_index.set_new(address_key(obj.namespace, ip), True)
                self.pod_ip_refs[(obj.namespace, ip)] = held + 1
            self._pods_changed = True

    def delete(self, kind: type[KubeObject], key: Key) -> None:
        """DELETED: the object of ``kind`` with ``key`` is gone (no-op if unknown)."""
        if kind is Service:
            if self.services.pop(key, None) is not None:
                self._ns_ref(key[0], -1)
                self._recompute(key)
        elif kind is EndpointSlice:
            old = self.slices.pop(key, None)
            if old is not None:
                if old.import_name:
                    self._import_slice(old, None)
                self._unlink_slice(old)
                self._ns_ref(old.namespace, -1)
        elif kind is ServiceImport:
            if self.imports.pop(key, None) is not None:
                self._ns_ref(key[0], -1)
                self._dirty_imports.add(key)
        elif kind is Namespace:
            if key[1] in self.namespace_objects:
                self.namespace_objects.discard(key[1])
                self._ns_ref(key[1], -1)
        else:
            pod = self.pods.pop(key, None)
            if pod is not None:
                self._unlink_pod(pod)
                self._ns_ref(pod.namespace, -1)

    def _unlink_slice(self, old: EndpointSlice) -> None:
        if not old.service:  # imported only: linked to no service
            return
        owner = (old.namespace, old.service)
        group = self.slices_by_svc[owner]
        del group[old.name]
        if not group:
            del self.slices_by_svc[owner]
        self._recompute(owner)

    def _import_slice(self, old: EndpointSlice | None, new: EndpointSlice | None) -> None:
        """The slice ``old`` (if imported) leaves its ServiceImport, ``new`` (if
        imported) joins its own; both imports are computed again at the next publish."""
        if old is not None and old.import_name:
            owner = (old.namespace, old.import_name)
            group = self.imported[owner]
            del group[old.name]
            if not group:
                del self.imported[owner]
            self._dirty_imports.add(owner)
        if new is not None and new.import_name:
            owner = (new.namespace, new.import_name)
            self.imported.setdefault(owner, {})[new.name] = new
            self._dirty_imports.add(owner)

    def _recompute(self, service: Key) -> None:
        """``service``'s whole contribution is computed again at the next publish."""
        self._touched.pop(service, None)
        self._dirty_services.add(service)

    def _endpoints_moved(self, service: Key, old: EndpointSlice, new: EndpointSlice) -> None:
        """A slice changed only its endpoints: note which, so that the next publish
        recomputes the names of those endpoints (and the service-wide RRsets), not the
        names of every endpoint of the service."""
        touched = self._touched.get(service)
        if touched is None:
            if service in self._dirty_services:
                return  # already recomputed whole
            touched = self._touched[service] = set()
        self._dirty_services.add(service)
        if new.address_type in ("IPv4", "IPv6"):
            touched.update(set(old.ready_items()).symmetric_difference(new.ready_items()))

    def _unlink_pod(self, pod: Pod) -> None:
        if self.pod_index is not None:
            self.pod_index.remove(pod)
        for ip in pod.ips:
            k = (pod.namespace, ip)
            left = self.pod_ip_refs[k] - 1
            if left:
                self.pod_ip_refs[k] = left
            else:
                del self.pod_ip_refs[k]
                self.pod_ip_index.delete(address_key(*k))
        self._pods_changed = True

    # ------------------------------------------------------------------ publication

    def publish(self, serial: int) -> Snapshot:
        """Settle every change since the last publish and freeze a snapshot."""
        writes = self.index.writes
        for ns in self._dirty_namespaces:
            owner: Owner = ("ns", ns, "")
            exists = ns in self.ns_refs and self._exposed(ns)
            self.book.claim(owner, self._namespace_claims(ns) if exists else {})
        if self._dirty_namespaces:
            self._namespaces = frozenset(ns for ns in self.ns_refs if self._exposed(ns))
            self._dirty_namespaces.clear()
            self._pods_changed = True  # pod_ips only holds exposed namespaces
        self.examined = 0
        for key in self._dirty_services:
            owner = ("svc", key[0], key[1])
            svc = self.services.get(key)
            if svc is None or not self._exposed(key[0]):
                self.book.withdraw(owner)
                self.infos.delete(key)
                continue
            slices = self.slices_by_svc.get(key)
            ordered = [slices[n] for n in sorted(slices)] if slices else []
            # A new service (every one, in a full build) has nothing to compare with:
            # its one-record names skip the claims (``lone``, see ``claim_fresh``).
            fresh = owner not in self.book.claimed
            lone: list[tuple[str, RRType, Any]] | None = [] if fresh else None
            touched = None if fresh else self._touched.get(key)
            info, claims, scope = self._service_claims(svc, ordered, touched, lone)
            self.examined += len(claims) + len(lone or ())
            if scope is not None:  # the names outside the scope stay as they are
                kept: Claims = {n: KEEP for n in self.book.claimed[owner][0] if n not in scope}
                kept.update(claims)
                claims = kept
            if self.infos.get(key) is not info:
                self.infos.set(key, info)
            if lone is None:
                self.book.claim(owner, claims)
            else:
                self.book.claim_fresh(owner, claims, lone)
        self._dirty_services.clear()
        self._touched.clear()
        for key in self._dirty_imports if self.multicluster else ():
            self._publish_import(key)
        self._dirty_imports.clear()
        self.book.claim(ZONE_OWNER, self._zone_claims(serial))  # the SOA serial, kube-dns
        if self._pods_changed:
            self._pod_ips = PodAddresses(self.pod_ip_index.freeze(), self._namespaces)
            self._pods_changed = False
        self.replaced = self.index.writes - writes
        return Snapshot(serial=serial, synced=True, config=self.config,
                        zones=self.zones_long_first, forward_zones=self.forward,
                        nodes=self.index.freeze_nodes(), namespaces=self._namespaces,
                        pod_ips=self._pod_ips, services=self.infos.freeze(),
                        pods_by_ip=(self.pod_index.freeze() if self.pod_index is not None
                                    else NO_PODS),
                        record_count=self.index.weight,
                        multicluster_zones=self.multicluster,
                        imports=self.import_infos.freeze())

    def _publish_import(self, key: Key) -> None:
        """Claim what the ServiceImport ``key`` makes under the multicluster zones
        (SPEC §S7), all of it, or withdraw it."""
        owner: Owner = (MCS_OWNER, key[0], key[1])
        imp = self.imports.get(key)
        if imp is None or not self._exposed(key[0]):
            self.book.withdraw(owner)
            self.import_infos.delete(key)
            return
        group = self.imported.get(key)
        slices = [group[n] for n in sorted(group)] if group else []
        claims: Claims = {}
        ready = 0
        for zone in self.multicluster:
            made = multicluster.import_records(
                imp, slices, zone, self.ttl, use_pod_names=self.use_pod_names,
                ignore_empty_service=self.config.ignore_empty_service)
            ready = made.ready
            if not made.exists:
                continue
            claims[made.base] = {}
            by_name: dict[str, list[Record]] = {}
            for rec in made.records:
                by_name.setdefault(rec.name, []).append(rec)
            claims.update((name, record_values(recs)) for name, recs in by_name.items())
            for ip, target in multicluster.clusterset_ptrs(imp, zone):
                rname = _reverse_name(ip)
                if self._reverse_served(ip, rname):  # local PTRs win: ClaimBook._merged
                    claims.setdefault(rname, {}).setdefault(RRType.PTR, {})[target] = None
        self.book.claim(owner, claims)
        info = service_info(imp.kind, ready)
        if self.import_infos.get(key) is not info:
            self.import_infos.set(key, info)

    # ----------------------------------------------------------------------- claims


    def _reverse_served(self, ip: str, rname: str) -> bool:
        """Whether the PTR name ``rname`` of ``ip`` is in a reverse zone we serve."""
        return (self.all_v6 if ":" in ip else self.all_v4) or any(
            names.is_subdomain(rname, z) for z in self.reverse)

    def _spelling(self, spelled: dict[str, str]) -> Callable[[str, str], str]:
        """``spelled.setdefault`` that first takes a name's object from the index."""
        index_get = self.index.get

        def one(text: str, _: str) -> str:
            found = spelled.get(text)
            if found is None:
                node = index_get(text)
                found = spelled[text] = text if node is None else node[NAME]
            return found
        return one

    def _zone_claims(self, serial: int) -> dict[str, dict[RRType, dict[Any, None]]]:
        ttl, domain = self.ttl, self.domain
        recs: list[Record] = []
        kube_dns = self.services.get(("kube-system", "kube-dns"))
        for zone in (*self.config.zones, *self.multicluster):
            recs.extend(multicluster.apex_records(zone, serial, ttl) if zone in self.multicluster
                        else records.apex_records(zone, domain, serial, ttl))
            if kube_dns is not None and zone not in self.reverse:
                ns_name = names.join("ns.dns", zone)
                recs.extend(records.address_record(ns_name, ttl, ip)
                            for ip in kube_dns.cluster_ips)
        by_name: dict[str, list[Record]] = {}
        for rec in recs:
            by_name.setdefault(rec.name, []).append(rec)
        claims = {name: record_values(rs) for name, rs in by_name.items()}
        for zone in self.forward:
            for label in ("svc", "pod"):
                claims.setdefault(names.join(label, zone), {})
        for zone in self.multicluster:
            claims.setdefault(names.join("svc", zone), {})
        return claims

    def _namespace_claims(self, ns: str) -> dict[str, dict[RRType, dict[Any, None]]]:
        claims: dict[str, dict[RRType, dict[Any, None]]] = {}
        pods = self.config.pods is not PodsMode.DISABLED
        for zone in self.forward:
            claims[names.join(ns, "svc", zone)] = {}
            if pods:
                claims[names.join(ns, "pod", zone)] = {}
        for zone in self.multicluster:
            claims[names.join(ns, "svc", zone)] = {}
        return claims

    def _service_claims(
        self, svc: Service, slices: list[EndpointSlice], touched: set[_Item] | None = None,
        lone: list[tuple[str, RRType, Any]] | None = None,
    ) -> tuple[ServiceInfo, Claims, set[str] | None]:
        """SPEC §S2.2-S2.7 for one service; the same rules as ``records.service_records``
        and ``records.ptr_records``, written for speed: raw values, no ``Record``s.

        With ``touched`` (the endpoints that changed since the last publish), only the
        service-wide names (the service name, its SRV owners, its ClusterIP PTRs) and the
        names of the touched endpoints are computed, and the third value is the scope:
        every name those could have held, before or now. Outside the scope the service's
        last claims stand. Without ``touched`` (or when the service has no ready
        endpoints left) everything is computed and the scope is None.

        With ``lone`` (for ``ClaimBook.claim_fresh``), the names of one record go there as (name,
        type, value) instead of into the claims: an endpoint's name with one address,
        and the PTRs when no two of the service's addresses share a name.
        """
        use_pod, kind = self.use_pod_names, svc.kind
        label_of = records.endpoint_label
        # One pass over the ready endpoints: the merged label -> addresses of the IP
        # slices (``records.ready_endpoints``), and for a headless service, per slice
        # with a named port, the distinct labels of its ready endpoints (SRV targets).
        ready: dict[str, dict[str, None]] = {}
        slice_labels: list[tuple[EndpointSlice, list[str]]] = []
        for sl in slices:
            counted = sl.address_type in ("IPv4", "IPv6")
            named = kind is ServiceKind.HEADLESS and any(p.name for p in sl.ports)
            if not counted and not named:
                continue
            if not named and not sl.has_hostnames and not (use_pod and sl.has_pod_names):
                # every label is the dashed address: the common case, made quick
                dotted = sl.address_type == "IPv4"
                for ip in sl.ready_addresses():
                    label = ip.replace(".", "-") if dotted else names.dashed_ip(ip)
                    ips_of = ready.get(label)
                    if ips_of is None:
                        ready[label] = {ip: None}
                    else:
                        ips_of[ip] = None
                continue
            by_ip: dict[str, str] = {}
            for addresses, hostname, pod_name in sl.ready_items():
                for ip in addresses:
                    label = label_of(hostname, pod_name, ip, use_pod)
                    if counted:
                        ips_of = ready.get(label)
                        if ips_of is None:
                            ready[label] = {ip: None}
                        else:
                            ips_of[ip] = None
                    if named:
                        by_ip[ip] = label
            if named:
                slice_labels.append((sl, list(dict.fromkeys(by_ip.values()))))
        info = service_info(kind, len(ready))
        claims: Claims = {}
        if not ready and (kind is ServiceKind.HEADLESS or (
                kind is ServiceKind.CLUSTER_IP and self.config.ignore_empty_service)):
            return info, claims, None
        A, AAAA, SRV = RRType.A, RRType.AAAA, RRType.SRV

        def add(name: str, rtype: RRType, value: Any) -> None:
            sets = claims.get(name)
            if sets is None:
                claims[name] = {rtype: {value: None}}
            else:
                sets.setdefault(rtype, {})[value] = None

        if kind is ServiceKind.EXTERNAL_NAME:
            for zone in self.forward:
                add(names.join(svc.name, svc.namespace, "svc", zone), RRType.CNAME,
                    svc.external_name)
            return info, claims, None

        # The endpoints whose own names (``<label>.<service>``, PTRs) are computed.
        labels: set[str] | None = None
        ips: set[str] | None = None
        scope: set[str] | None = None
        if touched is not None:
            labels, ips, scope = set(), set(svc.cluster_ips), set()
            for addresses, hostname, pod_name in touched:
                for ip in addresses:
                    labels.add(records.endpoint_label(hostname, pod_name, ip, use_pod))
                    ips.add(ip)
            scope.update(_reverse_name(ip) for ip in ips)
        wanted = ready if labels is None else {
            label: ips_of for label, ips_of in ready.items() if label in labels}

        # One string object per distinct name: an endpoint's name is its node's key,
        # its SRV target and its PTR target (the same text, stored once).
        # Recomputing a service, the names it holds already keep their objects: a new SRV
        # target would otherwise be a second copy of its endpoint name's text.
        spelled: dict[str, str] = {}
        one = spelled.setdefault if lone is not None else self._spelling(spelled)
        for zone in self.forward:
            base = names.join(svc.name, svc.namespace, "svc", zone)
            base = one(base, base)
            srv: dict[tuple[str, int, str], None] = {}
            if kind is ServiceKind.CLUSTER_IP:
                for ip in svc.cluster_ips:
                    add(base, AAAA if ":" in ip else A, ip)
                for port in svc.ports:
                    if port.name:
                        srv[(f"_{port.name}._{port.protocol}.{base}", port.port, base)] = None
            else:  # headless: ``ready`` is not empty (see above)
                sets: dict[RRType, dict[Any, None]] = {}
                claims[base] = sets
                for ips_of in ready.values():
                    for ip in ips_of:
                        rtype = AAAA if ":" in ip else A
                        values = sets.get(rtype)
                        if values is None:
                            sets[rtype] = {ip: None}
                        else:
                            values[ip] = None
                for sl, sl_labels in slice_labels:
                    for port in sl.ports:
                        if port.name:
                            owner = f"_{port.name}._{port.protocol}.{base}"
                            for label in sl_labels:
                                target = f"{label}.{base}"
                                srv[(owner, port.port, one(target, target))] = None
            if scope is not None:
                # Every name the service itself could hold: an SRV owner whose last
                # target went must go too.
                scope.add(base)
                ports = svc.ports if kind is ServiceKind.CLUSTER_IP else [
                    p for sl in slices for p in sl.ports]
                scope.update(f"_{p.name}._{p.protocol}.{base}" for p in ports if p.name)
                assert labels is not None
                scope.update(f"{label}.{base}" for label in labels)
            for label, ips_of in wanted.items():
                owner = f"{label}.{base}"
                owner = one(owner, owner)
                if len(ips_of) == 1 and owner not in claims:  # the common case
                    for ip in ips_of:
                        if lone is None:
                            claims[owner] = {AAAA if ":" in ip else A: {ip: None}}
                        else:  # no other name of the service can be this one
                            lone.append((owner, AAAA if ":" in ip else A, ip))
                    continue
                for ip in ips_of:
                    add(owner, AAAA if ":" in ip else A, ip)
            per_owner: dict[str, int] = {}
            for owner, _, _ in srv:
                per_owner[owner] = per_owner.get(owner, 0) + 1
            for owner, number, target in srv:
                add(owner, SRV, (0, records.srv_weight(per_owner[owner]), number, target))
            bare = list(dict.fromkeys((number, target) for _, number, target in srv))
            for number, target in bare:
                add(base, SRV, (0, records.srv_weight(len(bare)), number, target))
        if self.reverse:
            base = names.join(svc.name, svc.namespace, "svc", self.domain)
            base = one(base, base)
            # (address, PTR target) pairs: the ClusterIPs, then every endpoint's
            ptrs: list[tuple[str, str]] = []
            if kind is ServiceKind.CLUSTER_IP:
                ptrs.extend((ip, base) for ip in svc.cluster_ips)
            for label, ips_of in ready.items():
                if ips is not None and ips.isdisjoint(ips_of):
                    continue
                target = f"{label}.{base}"
                target = one(target, target)
                for ip in ips_of:
                    if ips is None or ip in ips:
                        ptrs.append((ip, target))
            reverse, all_v4, all_v6, PTR = self.reverse, self.all_v4, self.all_v6, RRType.PTR
            # An address under two labels means two PTRs at one name: merged in claims.
            lone_ptrs = lone if lone is not None and len(
                {ip for ip, _ in ptrs}) == len(ptrs) else None
            for ip, target in ptrs:
                rname = _reverse_name(ip)
                if (all_v6 if ":" in ip else all_v4) or any(
                        names.is_subdomain(rname, z) for z in reverse):
                    if lone_ptrs is not None:
                        lone_ptrs.append((rname, PTR, target))
                        continue
                    at = claims.get(rname)
                    if at is None:  # the common case: one PTR at a name
                        claims[rname] = {PTR: {target: None}}
                    else:
                        at.setdefault(PTR, {})[target] = None
        return info, claims, scope
