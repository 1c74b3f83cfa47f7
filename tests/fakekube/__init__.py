"""A fake Kubernetes API server for clusterdns's live-source tests.

It exists so the real ``kubernetes`` client (sync and ``kubernetes.aio``) can be tested
end to end over real HTTP(S) -- list, paginate, watch, resume, fail -- without a cluster.
See :mod:`.server` for the protocol subset and the threading model, and run
``python -m tests.fakekube --help`` to serve a YAML dump by hand.
"""

from .server import (
    CONTINUE_EXPIRED_MESSAGE,
    DEFAULT_USER,
    RESOURCES,
    TOO_LARGE_MESSAGE,
    TOO_NEW_MODES,
    FakeKube,
    RequestRecord,
    Resource,
    SelectorError,
    iter_yaml_objects,
    parse_field_selector,
    parse_label_selector,
    resource_for,
    status_body,
    too_large_status,
)

__all__ = [
    "CONTINUE_EXPIRED_MESSAGE",
    "DEFAULT_USER",
    "RESOURCES",
    "TOO_LARGE_MESSAGE",
    "TOO_NEW_MODES",
    "FakeKube",
    "RequestRecord",
    "Resource",
    "SelectorError",
    "iter_yaml_objects",
    "parse_field_selector",
    "parse_label_selector",
    "resource_for",
    "status_body",
    "too_large_status",
]
