"""What a socket that cannot be bound says: which one, where, why, and what to do.

``[Errno 98] Address already in use`` alone does not say whether the DNS port or one of
the HTTP ports is taken, nor ``[Errno 13] Permission denied`` that port 53 needs a
privilege. Every listening socket (DNS over UDP and TCP, the HTTP endpoints, the
``--workers`` supervisor's and the workers' alike) is bound through ``bind_or_explain``,
whose ``BindError`` names the role, the protocol and the address, and for a port below
1024 the three ways to allow it.
"""

from __future__ import annotations

import errno
import os
import socket
import sys

from clusterdns.config import ListenAddr

PRIVILEGED_BELOW = 1024  # net.ipv4.ip_unprivileged_port_start's default


class BindError(OSError):
    """A listening socket could not be bound; ``str()`` is the whole explanation.

    An ``OSError`` with the original ``errno``, so code that looks at it (the retry of
    a taken port 0) keeps working.
    """

    def __init__(self, message: str, cause: OSError) -> None:
        super().__init__(cause.errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def explain(exc: OSError, role: str, proto: str, host: str, port: int,
            setting: str = "") -> str:
    """One line: what could not listen where, why, and how to fix it.

    ``role`` is what the socket is for ("DNS", "HTTP /health"), ``proto`` "UDP" or
    "TCP", ``setting`` the flag or config key that chooses the address.
    """
    where = ListenAddr(host, port)
    head = f"cannot listen for {role} on {where} ({proto})"
    other = f"; choose another address with {setting}" if setting else ""
    code = exc.errno
    if code == errno.EADDRINUSE:
        tool = "ss -lunp" if proto == "UDP" else "ss -ltnp"
        why = (f"address already in use: another program (or another clusterdns) has "
               f"{proto} port {port} there; `{tool} 'sport = :{port}'` shows which{other}")
    elif code in (errno.EACCES, errno.EPERM) and 0 < port < PRIVILEGED_BELOW:
        why = (f"permission denied: ports below {PRIVILEGED_BELOW} need a privilege that "
               f"this process (uid {os.geteuid()}) does not have: run it with "
               f"CAP_NET_BIND_SERVICE (`setcap cap_net_bind_service=+ep "
               f"{os.path.realpath(sys.executable)}`, or in Kubernetes "
               f"securityContext.capabilities.add: [NET_BIND_SERVICE]), or lower the "
               f"first unprivileged port (`sysctl -w net.ipv4.ip_unprivileged_port_start="
               f"{port}`, a pod-level sysctl in Kubernetes), or listen on a port from "
               f"{PRIVILEGED_BELOW} up" + (f" ({setting})" if setting else ""))
    elif code in (errno.EACCES, errno.EPERM):
        why = f"permission denied (by a security policy such as SELinux or AppArmor?){other}"
    elif code == errno.EADDRNOTAVAIL:
        why = f"address not available: no network interface of this host has {host}{other}"
    elif code == errno.EAFNOSUPPORT:
        why = f"address family not supported: is IPv6 turned off on this host?{other}"
    else:
        why = f"{exc.strerror or exc}{other}"
    return f"{head}: {why}"


def bind_or_explain(sock: socket.socket, host: str, port: int, role: str,
                    setting: str = "") -> None:
    """``sock.bind((host, port))``, raising ``BindError`` that explains a failure."""
    try:
        sock.bind((host, port))
    except OSError as exc:
        proto = "UDP" if sock.type == socket.SOCK_DGRAM else "TCP"
        raise BindError(explain(exc, role, proto, host, port, setting), exc) from None
