# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""A TCP proxy in front of a PostgreSQL server that can cut a connection
at a COMMIT (a helper of the tests, not a test).

    with CommitCutter(server_port) as px:
        url = "postgresql://user@127.0.0.1:%d/db?sslmode=disable" % px.port
        ...
        px.arm("before")   # the next COMMIT never reaches the server
        px.arm("after")    # the next COMMIT is run, its answer never arrives
        assert px.tripped()

Either way the client sees its connection lost during COMMIT; "after" is
the case where the commit was made all the same.  The proxy reads the
client's messages (the frontend protocol: untyped startup packets, then a
type byte and a length) to find a simple Query "COMMIT"; everything else
passes through unchanged.  The URL must say sslmode=disable (and
gssencmode=disable) so that the stream is plain.

The proxy runs in a process of its own (this file as a script, driven
through its stdin and stdout): in the test's process it would need the GIL,
which the client may hold while it waits for the server.
"""
import select
import socket
import subprocess
import sys
import threading

_STARTUP_CODES_THEN_MORE = (80877103, 80877104)   # SSLRequest, GSSENCRequest


def _cut(*socks):
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


class Proxy:
    """The proxy itself (in the proxy process)."""

    def __init__(self, server_port):
        self.server_port = server_port
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.port = self.lsock.getsockname()[1]
        self.mode = None
        self.tripped = threading.Event()
        self.lock = threading.Lock()
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, mode):
        """Cut the connection that sends the next COMMIT: "before" it
        reaches the server, or "after" the server answered it."""
        assert mode in ("before", "after")
        self.tripped.clear()
        with self.lock:
            self.mode = mode

    def _take_mode(self):
        with self.lock:
            mode, self.mode = self.mode, None
            return mode

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(("127.0.0.1", self.server_port))
            except OSError:
                c.close()
                continue
            for x in (c, s):
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.socks += [c, s]
            conn = {"cut_on_answer": False}
            threading.Thread(target=self._up, args=(c, s, conn),
                             daemon=True).start()
            threading.Thread(target=self._down, args=(s, c, conn),
                             daemon=True).start()

    def _up(self, c, s, conn):
        """Client to server, message by message."""
        buf, startup = b"", True
        try:
            while True:
                data = c.recv(1 << 16)
                if not data:
                    break
                buf += data
                out = b""
                while True:
                    if startup:
                        if len(buf) < 8:
                            break
                        n = int.from_bytes(buf[:4], "big")
                        if len(buf) < n:
                            break
                        msg, buf = buf[:n], buf[n:]
                        code = int.from_bytes(msg[4:8], "big")
                        startup = code in _STARTUP_CODES_THEN_MORE
                        out += msg
                        continue
                    if len(buf) < 5:
                        break
                    n = int.from_bytes(buf[1:5], "big")
                    if len(buf) < 1 + n:
                        break
                    msg, buf = buf[:1 + n], buf[1 + n:]
                    if msg[:1] == b"Q" and \
                            msg[5:].rstrip(b"\0").strip().upper() == b"COMMIT":
                        mode = self._take_mode()
                        if mode == "before":
                            s.sendall(out)
                            _cut(c, s)
                            self.tripped.set()
                            return
                        if mode == "after":
                            conn["cut_on_answer"] = True
                    out += msg
                if out:
                    s.sendall(out)
        except OSError:
            pass
        _cut(c, s)

    def _down(self, s, c, conn):
        """Server to client, as it comes (cut at the answer to COMMIT)."""
        try:
            while True:
                data = s.recv(1 << 16)
                if not data:
                    break
                if conn["cut_on_answer"]:
                    _cut(c, s)
                    self.tripped.set()
                    return
                c.sendall(data)
        except OSError:
            pass
        _cut(s, c)

    def close(self):
        _cut(self.lsock)
        with self.lock:
            socks, self.socks = self.socks, []
        _cut(*socks)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def main():
    """The proxy process: argv[1] the server's port; prints its own port,
    then reads "before" / "after" lines (answering "armed") and prints
    "tripped" when it cut a connection."""
    px = Proxy(int(sys.argv[1]))
    print(px.port, flush=True)

    def report():
        while True:
            px.tripped.wait()
            px.tripped.clear()
            print("tripped", flush=True)
    threading.Thread(target=report, daemon=True).start()
    for line in sys.stdin:
        px.arm(line.strip())
        print("armed", flush=True)
    px.close()


class CommitCutter:
    """The test's handle on a proxy process (see the module doc)."""

    def __init__(self, server_port):
        self.p = subprocess.Popen([sys.executable, __file__, str(server_port)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True)
        self.port = int(self._line())

    def _line(self, timeout=30):
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            return None
        return self.p.stdout.readline().strip()

    def arm(self, mode):
        assert mode in ("before", "after")
        self.p.stdin.write(mode + "\n")
        self.p.stdin.flush()
        assert self._line() == "armed"

    def tripped(self, timeout=30):
        """Whether the armed cut happened (waits for it up to timeout)."""
        return self._line(timeout) == "tripped"

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.p.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    main()
