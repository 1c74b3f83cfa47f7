"""Where objects come from: a YAML/JSON dump (``file``) or the API server (``kube``).

Errors shared by both live here, so that code which only needs to catch them (the CLI,
reload) does not import the ``kubernetes`` package (about 1.7 s here) for a file source.
"""


class KubeSourceError(Exception):
    """The source cannot start (no kubeconfig and not in a cluster, a bad kubeconfig)."""
