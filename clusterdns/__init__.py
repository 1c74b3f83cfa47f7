"""clusterdns: an authoritative DNS server for Kubernetes cluster domains."""

__version__ = "0.1.0"
