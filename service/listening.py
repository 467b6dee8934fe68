"""A listening socket per worker, opened only once the worker is warm.

BentoML's workers all accept from one listening socket that the server process opens. When several
connections arrive at once, the first worker to wake accepts every one of them, and line cameras
keep their connections for hours: 8 cameras ended up 8/0 on two workers. And a shared socket takes
connections for every worker from the moment the server starts, so a connection can wait in the
queue of a worker still loading and warming its models (seconds; on a GPU every batch shape's kernel
search) while another worker is idle. With SO_REUSEPORT, every worker has a socket of its own on the
same port and the kernel spreads new connections over the sockets that listen.

Two halves, both Linux only:
- `bind_server_socket_for_workers`, in the `bentoml serve` process: its socket is bound with
  SO_REUSEPORT, to hold the port, but does not listen, so that it takes no connections itself;
- `bind_in_this_worker`, in each worker: a socket of its own, bound to the same address with
  SO_REUSEPORT, put in place of the one it inherited (same descriptor number). It does not listen
  yet: uvicorn listens on it once the application's start-up (loading and warming the models) is
  over, so a worker starting, or restarted after a crash, takes no connection before it is warm.
Where either half cannot be done, the workers share the server's socket as before.

`listeners` counts the sockets listening on an address, for a readiness that means every worker.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import sys
from collections.abc import Callable

log = logging.getLogger(__name__)

_LINUX = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_server_socket_for_workers(on_bound: Callable[[socket.AddressFamily, tuple], None] | None = None) -> None:
    """Make circus (under `bentoml serve`) bind TCP sockets with SO_REUSEPORT and leave listening to the
    workers; `on_bound(family, address)` is told each address bound so."""
    if not _LINUX:
        return
    from circus.sockets import CircusSocket

    if getattr(CircusSocket.bind_and_listen, "_per_worker", False):
        return
    shared = CircusSocket.bind_and_listen

    def bind_only(self: CircusSocket) -> None:
        if self.is_unix or self.family not in (socket.AF_INET, socket.AF_INET6):
            shared(self)
            return
        # SO_REUSEPORT would let this server share the port with another one that is running (a
        # restart before the old server stopped): refuse, as a plain bind would.
        if _someone_listens(self.family, self.host, self.port):
            raise OSError(errno.EADDRINUSE, f"{self.host}:{self.port} is in use by another server")
        self.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.bind((self.host, self.port))
        self.setblocking(False)
        if on_bound is not None:
            on_bound(self.family, self.getsockname())

    bind_only._per_worker = True  # type: ignore[attr-defined]
    CircusSocket.bind_and_listen = bind_only


def _someone_listens(family: int, host: str, port: int) -> bool:
    if port == 0:
        return False
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def worker_argument(argv: list[str], name: str) -> int | None:
    """An integer option BentoML starts a worker with (`--fd N`, `--backlog N`); None outside a worker."""
    if name not in argv:
        return None
    try:
        return int(argv[argv.index(name) + 1])
    except (IndexError, ValueError):
        return None


def bind_in_this_worker(fd: int) -> bool:
    """Put a socket of this worker's own, bound to the inherited socket's address but not listening,
    under descriptor `fd`: the worker's server listens on it once the worker is warm.

    Returns whether it did; otherwise the inherited socket is left as it is, shared as before."""
    if not _LINUX:
        return False
    inherited = socket.socket(fileno=os.dup(fd))
    try:
        if inherited.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        if inherited.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return False  # the server listens on it: BentoML's shared socket, unchanged
        try:
            own = socket.socket(inherited.family, socket.SOCK_STREAM)
            with own:
                own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                own.bind(inherited.getsockname())
                os.dup2(own.fileno(), fd, inheritable=False)  # `fd` keeps the socket open
        except OSError as exc:
            # uvicorn listens on the server's socket instead, once this worker is warm.
            log.warning("no listening socket of this worker's own (%s): sharing the server's", exc)
            return False
        return True
    finally:
        inherited.close()


_TCP_LISTEN = "0A"  # the state column of /proc/net/tcp


def listeners(fd: int) -> tuple[int, bool] | None:
    """How many workers' sockets listen on the address of socket `fd` (one per warm worker), and whether
    the server process's own still listens there too (it answers the warm-up, `service.warming`, until
    it sees every worker listening); None where this cannot be read (not Linux). A socket bound with
    SO_REUSEPORT but not yet listening is not counted."""
    if not _LINUX:
        return None
    with socket.socket(fileno=os.dup(fd)) as sock:
        family, (host, port) = sock.family, sock.getsockname()[:2]
    everyone = listeners_at(family, host, port)
    workers = listeners_at(family, host, port, excluding=socket_inodes(os.getppid()))
    if everyone is None or workers is None:
        return None
    return workers, everyone > workers


def listeners_at(family: int, host: str, port: int, excluding: set[str] = frozenset()) -> int | None:
    """How many sockets listen on (host, port), but those whose inode is in `excluding`; None where this
    cannot be read."""
    table = "/proc/net/tcp" if family == socket.AF_INET else "/proc/net/tcp6"
    wanted = f"{_proc_address(family, host)}:{port:04X}"
    try:
        with open(table) as rows:
            next(rows)  # the header
            return sum(1 for row in rows if _listens_at(row, wanted, excluding))
    except OSError:
        return None


def socket_inodes(pid: int) -> set[str]:
    """The inodes of the sockets process `pid` holds open, as /proc/net/tcp names them."""
    inodes = set()
    try:
        for entry in os.scandir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(entry.path)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    except OSError:
        pass
    return inodes


def _listens_at(row: str, address: str, excluding: set[str]) -> bool:
    fields = row.split()
    return len(fields) > 9 and fields[1] == address and fields[3] == _TCP_LISTEN and fields[9] not in excluding


def _proc_address(family: int, host: str) -> str:
    """An IP address as /proc/net/tcp(6) writes it: each 32-bit word in the host's byte order, in hex."""
    packed = socket.inet_pton(family, host)
    words = [packed[i : i + 4] for i in range(0, len(packed), 4)]
    return "".join(int.from_bytes(word, sys.byteorder).to_bytes(4, "big").hex().upper() for word in words)
