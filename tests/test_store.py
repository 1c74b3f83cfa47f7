"""The store: watch events and relists applied to the current objects of each kind."""

from __future__ import annotations

from clusterdns.objects import Namespace, Service, ServiceKind
from clusterdns.store import Kind, Store


def svc(ns: str, name: str, ip: str = "10.0.0.1") -> Service:
    return Service(ns, name, ServiceKind.CLUSTER_IP, (ip,))


def test_applying_an_unchanged_object_reports_no_change_and_keeps_the_generation() -> None:
    store = Store()
    assert store.apply(Kind.SERVICE, svc("a", "web"))
    generation = store.generation
    assert not store.apply(Kind.SERVICE, svc("a", "web"))
    assert store.generation == generation
    assert store.apply(Kind.SERVICE, svc("a", "web", "10.0.0.2"))
    assert store.cluster().services == (svc("a", "web", "10.0.0.2"),)


def test_deleting_removes_the_object_and_deleting_an_unknown_key_changes_nothing() -> None:
    store = Store()
    store.apply(Kind.SERVICE, svc("a", "web"))
    assert store.delete(Kind.SERVICE, ("a", "web"))
    assert not store.delete(Kind.SERVICE, ("a", "web"))
    assert store.cluster().services == ()


def test_a_relist_replaces_the_kind_so_objects_deleted_during_a_gap_disappear() -> None:
    store = Store()
    for name in ("one", "two", "three"):
        store.apply(Kind.SERVICE, svc("a", name))
    store.apply(Kind.NAMESPACE, Namespace("a"))
    assert store.replace(Kind.SERVICE, [svc("a", "one"), svc("b", "four")])
    assert {s.name for s in store.cluster().services} == {"one", "four"}
    assert store.cluster().namespaces == (Namespace("a"),)  # other kinds untouched
    assert not store.replace(Kind.SERVICE, [svc("a", "one"), svc("b", "four")])


def test_a_relist_of_one_namespace_leaves_the_other_namespaces_alone() -> None:
    store = Store()
    store.apply(Kind.SERVICE, svc("a", "one"))
    store.apply(Kind.SERVICE, svc("b", "two"))
    assert store.replace(Kind.SERVICE, [svc("a", "new")], scope="a")
    assert {(s.namespace, s.name) for s in store.cluster().services} == {("a", "new"), ("b", "two")}
