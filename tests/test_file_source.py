"""The file source: loading cluster dumps, warnings for bad objects, polling for edits."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import yaml

from clusterdns.objects import Cluster, Namespace, Pod, ServiceKind
from clusterdns.source.dump import ItemCache, LoadResult, SourceError, load_files
from clusterdns.source.file import FileSource
from conftest import DEMO_CLUSTER, EXTRA_CLUSTER

DEMO = Path(__file__).parent.parent / "config" / "demo-cluster.yaml"
LOGGER = "clusterdns.source.file"

NAMESPACE_DOC = "kind: Namespace\nmetadata: {name: prod}\n"


def service_doc(name: str, ip: str = "10.96.0.1", namespace: str = "default") -> str:
    return (f"kind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n"
            f"spec: {{clusterIP: '{ip}'}}\n")


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str, name: str = "dump.yaml") -> LoadResult:
    return load_files([write(tmp_path / name, text)])


# ------------------------------------------------------------------------ file formats


def test_a_multi_document_yaml_file_loads_every_document(tmp_path: Path) -> None:
    result = load_text(tmp_path, NAMESPACE_DOC + "---\n" + service_doc("web"))
    assert result.cluster.namespaces == (Namespace("prod"),)
    assert [s.name for s in result.cluster.services] == ["web"]
    assert result.warnings == ()


def test_a_kind_list_document_loads_its_items(tmp_path: Path) -> None:
    text = """
apiVersion: v1
kind: List
items:
- {kind: Namespace, metadata: {name: default}}
- {kind: Pod, metadata: {name: web-1, namespace: default}, status: {podIP: 10.244.0.5}}
"""
    cluster = load_text(tmp_path, text).cluster
    assert cluster.namespaces == (Namespace("default"),)
    assert cluster.pods == (Pod("default", "web-1", ("10.244.0.5",)),)


def test_items_of_a_typed_list_may_leave_out_their_kind(tmp_path: Path) -> None:
    text = """
kind: ServiceList
items:
- {metadata: {name: web, namespace: default}, spec: {clusterIP: 10.96.0.1}}
"""
    assert [s.name for s in load_text(tmp_path, text).cluster.services] == ["web"]


def test_a_json_dump_is_read(tmp_path: Path) -> None:
    dump = {"kind": "List", "items": [
        {"kind": "Namespace", "metadata": {"name": "default"}},
        {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"clusterIP": "10.96.0.1"}},
    ]}
    result = load_text(tmp_path, "\n  " + json.dumps(dump, indent=2), "dump.json")
    assert result.cluster.namespaces == (Namespace("default"),)
    assert result.cluster.services[0].cluster_ips == ("10.96.0.1",)


def test_empty_documents_are_ignored(tmp_path: Path) -> None:
    result = load_text(tmp_path, "---\n---\n# only a comment\n---\n" + NAMESPACE_DOC + "---\n")
    assert result.cluster.namespaces == (Namespace("prod"),)
    assert result.warnings == ()


def test_an_empty_file_is_an_empty_cluster(tmp_path: Path) -> None:
    assert load_text(tmp_path, "") == LoadResult(Cluster(), (), {})


def test_a_list_with_null_items_is_empty(tmp_path: Path) -> None:
    assert load_text(tmp_path, "kind: List\nitems: null\n").cluster == Cluster()


def test_objects_from_several_files_are_merged(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", NAMESPACE_DOC)
    second = write(tmp_path / "b.yaml", service_doc("web"))
    cluster = load_files([first, second]).cluster
    assert (len(cluster.namespaces), len(cluster.services)) == (1, 1)


def test_the_last_of_duplicate_objects_wins(tmp_path: Path) -> None:
    first = write(tmp_path / "a.yaml", service_doc("web", "10.0.0.1") + "---\n"
                  + service_doc("web", "10.0.0.1", namespace="other"))
    second = write(tmp_path / "b.yaml", service_doc("Web", "10.0.0.2"))
    services = load_files([first, second]).cluster.services
    assert [(s.namespace, s.name, s.cluster_ips) for s in services] == [
        ("default", "web", ("10.0.0.2",)), ("other", "web", ("10.0.0.1",))]


def test_unsupported_kinds_are_counted_not_loaded(tmp_path: Path) -> None:
    text = """
kind: List
items:
- {kind: ConfigMap, metadata: {name: a}}
- {kind: Deployment, metadata: {name: b}}
- {kind: ConfigMap, metadata: {name: c}}
---
kind: Node
metadata: {name: kind-worker}
"""
    result = load_text(tmp_path, text)
    assert dict(result.ignored) == {"ConfigMap": 2, "Deployment": 1, "Node": 1}
    assert list(result.ignored) == ["ConfigMap", "Deployment", "Node"]
    assert result.cluster == Cluster()
    assert result.warnings == ()


# --------------------------------------------------------------------------- warnings


def test_a_malformed_list_item_is_skipped_with_a_warning_naming_where_it_is(
        tmp_path: Path) -> None:
    text = """
kind: List
items:
- {kind: Namespace, metadata: {name: default}}
- kind: Service
  metadata: {name: web, namespace: default}
  spec: {clusterIPs: ["x"]}
- kind: Service
  metadata: {name: ok, namespace: default}
  spec: {clusterIP: 10.96.0.7}
"""
    result = load_text(tmp_path, text)
    path = tmp_path / "dump.yaml"
    assert result.warnings == (
        f'{path}: document 1, item 2 (Service default/web): '
        'spec.clusterIPs[0]: "x" is not an IP address',)
    assert [s.name for s in result.cluster.services] == ["ok"]


def test_a_warning_for_a_plain_document_has_no_item_number(tmp_path: Path) -> None:
    text = NAMESPACE_DOC + "---\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: nope}\n"
    (warning,) = load_text(tmp_path, text).warnings
    assert warning == (f'{tmp_path / "dump.yaml"}: document 2 (Pod default/p): '
                       'status.podIP: "nope" is not an IP address')


def test_a_warning_names_a_namespace_object_without_a_namespace(tmp_path: Path) -> None:
    (warning,) = load_text(tmp_path, "kind: Namespace\nmetadata: {name: x, labels: 5}\n"
                           "spec: 1\n---\nkind: Namespace\nmetadata: {name: 7}\n").warnings
    assert warning.endswith("document 2 (Namespace): metadata.name: "
                            "expected a non-empty string, got 7")


def test_non_mapping_documents_and_items_are_skipped_with_a_warning(tmp_path: Path) -> None:
    text = "just text\n---\n- a\n- b\n---\nkind: List\nitems: [5, null]\n---\n" + NAMESPACE_DOC
    result = load_text(tmp_path, text)
    where = tmp_path / "dump.yaml"
    assert result.warnings == (
        f'{where}: document 1: expected a mapping, got "just text"',
        f"{where}: document 2: expected a mapping, got a list",
        f"{where}: document 3, item 1: expected a mapping, got 5",
        f"{where}: document 3, item 2: expected a mapping, got null",
    )
    assert result.cluster.namespaces == (Namespace("prod"),)


def test_list_items_that_are_not_a_list_give_a_warning(tmp_path: Path) -> None:
    (warning,) = load_text(tmp_path, "kind: PodList\nitems: {a: 1}\n").warnings
    assert warning.endswith("document 1 (PodList): items: expected a list, got a mapping")


def test_an_object_without_a_usable_kind_is_skipped_with_a_warning(tmp_path: Path) -> None:
    text = "metadata: {name: a}\n---\nkind: [Pod]\nmetadata: {name: b}\n"
    result = load_text(tmp_path, text)
    assert [w.split(": ", 1)[1] for w in result.warnings] == [
        "document 1: kind: required", "document 2: kind: expected a string, got a list"]


# ------------------------------------------------------------------------ SourceError


def test_a_missing_file_is_a_source_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SourceError, match=f"^{re.escape(str(missing))}: cannot read: No such"):
        load_files([missing])


def test_a_directory_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot read"):
        load_files([tmp_path])


def test_a_file_that_is_not_utf8_is_a_source_error(tmp_path: Path) -> None:
    path = tmp_path / "dump.yaml"
    path.write_bytes(b"kind: Namespace\nmetadata: {name: \xff}\n")
    with pytest.raises(SourceError, match="not UTF-8 text"):
        load_files([path])


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "dump.yaml", NAMESPACE_DOC + "---\nkind: Pod\n  metadata: x\n")
    with pytest.raises(SourceError) as info:
        load_files([path])
    assert str(info.value).startswith(f"{path}: not valid YAML at line 5, column 11: ")


def test_a_control_character_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "dump.yaml", "kind: Namespace\nmetadata: {name: \u00e9\u00e9\x07}\n")
    with pytest.raises(SourceError) as info:
        load_files([path])
    assert str(info.value).startswith(f"{path}: not valid YAML at line 2, column 20: ")


def test_a_json_syntax_error_names_the_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "dump.json", '{\n  "kind": "List",\n  "items": [,]\n}\n')
    with pytest.raises(SourceError) as info:
        load_files([path])
    assert str(info.value) == f"{path}: not valid JSON at line 3, column 13: Expecting value"


def test_one_broken_file_fails_the_whole_load(tmp_path: Path) -> None:
    good = write(tmp_path / "good.yaml", NAMESPACE_DOC)
    bad = write(tmp_path / "bad.yaml", "kind: [")
    with pytest.raises(SourceError, match=r"bad\.yaml"):
        load_files([good, bad])


# ------------------------------------------------------------------------ demo cluster


def test_the_demo_cluster_loads_without_warnings() -> None:
    result = load_files([DEMO])
    cluster = result.cluster
    assert (len(cluster.namespaces), len(cluster.services), len(cluster.endpoint_slices),
            len(cluster.pods)) == (5, 12, 11, 18)
    assert result.warnings == ()
    assert dict(result.ignored) == {}
    kinds = {s.name: s.kind for s in cluster.services}
    assert kinds["rabbitmq"] is ServiceKind.HEADLESS
    assert kinds["httpbin"] is ServiceKind.EXTERNAL_NAME


# ---------------------------------------------------------------------- FileSource.load


def test_load_logs_one_summary_line_each_warning_and_the_ignored_kinds(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "dump.yaml", """
kind: List
items:
- {kind: Namespace, metadata: {name: default}}
- {kind: ConfigMap, metadata: {name: a}}
- {kind: ConfigMap, metadata: {name: b}}
- {kind: Deployment, metadata: {name: c}}
- {kind: Service, metadata: {name: bad}, spec: 5}
""")
    caplog.set_level(logging.INFO, logger=LOGGER)
    cluster = FileSource([path]).load()
    assert cluster.namespaces == (Namespace("default"),)
    messages = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert messages[0] == (logging.WARNING, f"skipped {path}: document 1, item 5 (Service "
                                            "default/bad): spec: expected a mapping, got 5")
    level, summary = messages[1]
    assert level == logging.INFO
    assert summary.startswith(f"loaded 1 namespaces, 0 services, 0 endpoint slices, 0 pods "
                              f"from {path} in ")
    assert messages[2] == (logging.INFO,
                           "ignored 3 objects of unsupported kinds: ConfigMap=2, Deployment=1")
    assert len(messages) == 3


def test_load_raises_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError):
        FileSource([tmp_path / "missing.yaml"]).load()


# ----------------------------------------------------------------------- FileSource.run


class StepSleep:
    """A fake sleep: ``run`` makes one poll per ``step()``, and the test knows when."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._go: asyncio.Queue[None] = asyncio.Queue()
        self._asleep: asyncio.Queue[None] = asyncio.Queue()

    async def __call__(self, seconds: float) -> None:
        self.durations.append(seconds)
        self._asleep.put_nowait(None)
        await self._go.get()

    async def wait_asleep(self) -> None:
        await asyncio.wait_for(self._asleep.get(), timeout=5)

    async def step(self) -> None:
        self._go.put_nowait(None)
        await self.wait_asleep()


@asynccontextmanager
async def running(source: FileSource, changed: Callable[[], None]) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run(changed))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def service_names(cluster: Cluster) -> list[str]:
    return [s.name for s in cluster.services]


class Published:
    """What ``run`` made current each time it said something changed."""

    def __init__(self, source: FileSource) -> None:
        self.source = source
        self.clusters: list[Cluster] = []
        self.queue: asyncio.Queue[Cluster] = asyncio.Queue()

    def __call__(self) -> None:
        cluster = self.source.cluster()
        self.clusters.append(cluster)
        self.queue.put_nowait(cluster)

    def names(self) -> list[list[str]]:
        return [service_names(c) for c in self.clusters]


async def test_run_publishes_an_edited_file(tmp_path: Path) -> None:
    path = write(tmp_path / "dump.yaml", service_doc("web"))
    source = FileSource([path], poll_interval=0.05, settle=0.05)
    assert service_names(source.load()) == ["web"]
    published = Published(source)
    async with running(source, published):
        write(path, service_doc("web") + "---\n" + service_doc("api", "10.96.0.2"))
        cluster = await asyncio.wait_for(published.queue.get(), timeout=5)
    assert service_names(cluster) == ["web", "api"]


async def test_run_keeps_the_previous_snapshot_when_an_edit_is_broken(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "dump.yaml", service_doc("web"))
    sleep = StepSleep()
    source = FileSource([path], poll_interval=0.05, settle=0.0, sleep=sleep)
    source.load()
    published = Published(source)
    async with running(source, published):
        await sleep.wait_asleep()
        write(path, "kind: [\n")
        await sleep.step()
        (error,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert error.startswith(f"keeping the previous snapshot: {path}: not valid YAML "
                                "at line 2, column 1: ")
        await sleep.step()  # unchanged since the failure: no retry, no second error
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1
        assert published.clusters == []
        assert service_names(source.cluster()) == ["web"]
        write(path, service_doc("fixed"))
        await sleep.step()
    assert published.names() == [["fixed"]]


async def test_run_keeps_the_previous_snapshot_while_a_file_is_missing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path / "dump.yaml", service_doc("web"))
    sleep = StepSleep()
    source = FileSource([path], settle=0.0, sleep=sleep)
    source.load()
    published = Published(source)
    async with running(source, published):
        await sleep.wait_asleep()
        path.unlink()
        await sleep.step()
        assert published.clusters == []
        assert any("keeping the previous snapshot" in r.getMessage() and "cannot read" in
                   r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
        write(path, service_doc("back"))
        await sleep.step()
    assert published.names() == [["back"]]


async def test_run_does_not_reload_an_unchanged_file(tmp_path: Path) -> None:
    path = write(tmp_path / "dump.yaml", service_doc("web"))
    sleep = StepSleep()
    source = FileSource([path], settle=0.0, sleep=sleep)
    source.load()
    published = Published(source)
    async with running(source, published):
        await sleep.wait_asleep()
        for _ in range(3):
            await sleep.step()
    assert published.clusters == []


async def test_run_notices_a_same_size_rewrite_with_the_same_mtime(tmp_path: Path) -> None:
    path = write(tmp_path / "dump.yaml", service_doc("aaa"))
    before = path.stat()
    sleep = StepSleep()
    source = FileSource([path], settle=0.0, sleep=sleep)
    source.load()
    published = Published(source)
    async with running(source, published):
        await sleep.wait_asleep()
        replacement = write(tmp_path / "dump.yaml.new", service_doc("bbb"))
        os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(replacement, path)
        after = path.stat()
        assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
        await sleep.step()
    assert published.names() == [["bbb"]]


async def test_run_loads_and_publishes_at_once_when_load_was_not_called(tmp_path: Path) -> None:
    path = write(tmp_path / "dump.yaml", service_doc("web"))
    sleep = StepSleep()
    source = FileSource([path], settle=0.0, sleep=sleep)
    published = Published(source)
    async with running(source, published):
        await sleep.wait_asleep()
    assert published.names() == [["web"]]


async def test_run_polls_on_a_fixed_cadence_whatever_a_reload_costs(tmp_path: Path) -> None:
    path = write(tmp_path / "dump.yaml", service_doc("web"))
    now = [100.0]
    sleep = StepSleep()
    changes: list[None] = []

    def changed() -> None:  # handling the change takes half a second
        changes.append(None)
        now[0] += 0.5

    async with running(FileSource([path], poll_interval=2.0, settle=0.0,
                                  clock=lambda: now[0], sleep=sleep), changed):
        await sleep.wait_asleep()  # the first poll loads and publishes
        await sleep.step()  # nothing changed
    assert sleep.durations == [1.5, 2.0]
    assert len(changes) == 1


async def test_a_file_renamed_over_the_dump_is_loaded_at_once_an_in_place_edit_settles_first(
        tmp_path: Path) -> None:
    path = write(tmp_path / "dump.yaml", service_doc("web"))
    source = FileSource([path], poll_interval=0.05, settle=5.0)
    source.load()
    published = Published(source)
    async with running(source, published):
        replacement = write(tmp_path / "dump.yaml.new", service_doc("renamed"))
        os.replace(replacement, path)  # a new inode: complete by construction
        cluster = await asyncio.wait_for(published.queue.get(), timeout=3)
        assert service_names(cluster) == ["renamed"]
        write(path, service_doc("edited"))  # in place: waits for 5 quiet seconds
        await asyncio.sleep(1.0)
        assert service_names(source.cluster()) == ["renamed"]


# ------------------------------------------------------ YAML Lists, item by item


def kubectl_yaml_list(objects: list[dict[str, object]]) -> str:
    """A List as ``kubectl get -A -o yaml`` writes it (keys sorted, items at column 0)."""
    return str(yaml.safe_dump({"apiVersion": "v1", "items": objects, "kind": "List",
                               "metadata": {"resourceVersion": ""}},
                              default_flow_style=False))


def demo_objects() -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for path in (DEMO_CLUSTER, EXTRA_CLUSTER):
        out.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def test_a_yaml_list_read_item_by_item_through_the_cache_equals_reading_it_whole(
        tmp_path: Path) -> None:
    objects = demo_objects()
    objects[3] = {"kind": "Service", "metadata": {"name": "bad"}, "spec": {"clusterIP": "x"}}
    path = write(tmp_path / "dump.yaml", kubectl_yaml_list(objects))
    whole = load_files([path])
    cache = ItemCache()
    for _ in range(2):  # the first load fills the cache, the second reads from it
        assert load_files([path], cache) == whole
        assert cache.complete
        assert len(cache.items) == len(objects)
    assert len(whole.warnings) == 1 and "item 4" in whole.warnings[0]


def test_a_rewritten_yaml_list_parses_only_the_items_that_changed(tmp_path: Path) -> None:
    objects = demo_objects()
    path = write(tmp_path / "dump.yaml", kubectl_yaml_list(objects))
    cache = ItemCache()
    load_files([path], cache)
    before = dict(cache.items)
    changed = next(i for i, o in enumerate(objects) if o.get("kind") == "Service")
    objects[changed] = {**objects[changed], "metadata": {
        **objects[changed]["metadata"], "labels": {"new": "label"}}}  # type: ignore[dict-item]
    write(path, kubectl_yaml_list(objects))
    result = load_files([path], cache)
    fresh = [text for text in cache.items if text not in before]
    assert len(fresh) == 1 and "new: label" in fresh[0]
    assert result == load_files([path])
    assert cache.items[fresh[0]] is not None


@pytest.mark.parametrize("text", [
    "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod}\n",  # not a List
    "items:\n- kind: Namespace\n  metadata: {name: prod}\n---\nkind: Namespace\n"
    "metadata: {name: dev}\n",  # a second document after the List
    "kind: List\nitems:\n  - kind: Namespace\n    metadata: {name: prod}\n",  # indented items
])
def test_yaml_that_is_not_a_kubectl_style_list_is_read_whole(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "dump.yaml", text)
    cache = ItemCache()
    assert load_files([path], cache) == load_files([path])
    assert not cache.complete


def test_a_broken_item_is_reported_as_a_whole_parse_would_report_it(tmp_path: Path) -> None:
    path = write(tmp_path / "dump.yaml", "apiVersion: v1\nitems:\n- kind: Namespace\n"
                 "  metadata: {name: prod\n- kind: Namespace\n  metadata: {name: dev}\n"
                 "kind: List\n")
    with pytest.raises(SourceError) as whole:
        load_files([path])
    with pytest.raises(SourceError) as cached:
        load_files([path], ItemCache())
    assert str(cached.value) == str(whole.value)
