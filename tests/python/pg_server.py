# outcore: out-of-core arrays on a userspace virtual memory manager.
# Copyright (C) 2026 the outcore developers.
# SPDX-License-Identifier: GPL-3.0-or-later WITH outcore-OSI-exception
"""A throwaway PostgreSQL server for the tests (a helper, not a test).

    with PGServer() as srv:          # initdb + pg_ctl start, stopped at exit
        url = srv.createdb("t1")     # postgresql://user:pass@127.0.0.1:PORT/t1
        url = srv.url("t1", password=False)   # the password from srv.passfile
        srv.restart()                # same data, same port (also halt/resume)
        psql(url, "SELECT 1")        # run SQL, get psql's unaligned output

The cluster lives in a temporary directory, listens only on 127.0.0.1 on a
free port (and a Unix socket in that directory), and has one superuser with
a generated name and password, authenticated with scram-sha-256.  initdb
refuses to run as root: as root, the server binaries run as the user
postgres (via runuser) and the directory is given to it.  Clients (psql,
createdb) run as the caller.

passfile is a libpq password file for the server (PGPASSFILE=passfile lets a
URL without password connect): what to use where a URL is shown or pickled.

missing() says why a server cannot be run here (None if it can): the
tests skip with that reason only.
"""
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile


def bindir():
    """The directory of initdb and pg_ctl, or None."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and \
                os.access(os.path.join(d, "pg_ctl"), os.X_OK):
            return d
    return None


def missing():
    """Why no server can be started (a reason), or None."""
    if bindir() is None:
        return ("PostgreSQL server binaries not found (/usr/lib/postgresql/*/"
                "bin/initdb): install Debian's postgresql")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no user postgres to run initdb"
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing"
    return None


def psql(url, sql, env=None):
    """Run sql through psql on the database of url (a connection URI);
    psql's output, unaligned, tuples only ("|" between columns)."""
    exe = os.path.join(bindir() or "/usr/bin", "psql")
    r = subprocess.run([exe, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                        "-d", url, "-c", sql], stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    if r.returncode:
        raise RuntimeError("psql failed (%d): %s" % (r.returncode, r.stderr))
    return r.stdout


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PGServer:
    def __init__(self):
        self.bindir = bindir()
        self.user = "oc_" + secrets.token_hex(4)
        self.password = secrets.token_urlsafe(18)
        self.port = None
        self.dir = None
        self.passfile = None
        self.started = False

    def _run(self, args, env=None, check=True):
        cmd = [os.path.join(self.bindir, args[0])] + list(args[1:])
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env=env, timeout=120)
        if check and r.returncode:
            raise RuntimeError("%s failed (%d):\n%s" % (args[0], r.returncode,
                                                       r.stdout))
        return r

    def start(self):
        self.dir = tempfile.mkdtemp(prefix="outcore-pg-")
        os.chmod(self.dir, 0o700)
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.dir, "data")
        pwfile = os.path.join(self.dir, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        os.chmod(pwfile, 0o600)
        self._run(["initdb", "-D", data, "-U", self.user, "--pwfile", pwfile,
                   "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
                   "--no-instructions"])
        os.unlink(pwfile)
        self.port = _free_port()
        # the client's password file: readable by the caller only
        self.passfile = os.path.join(self.dir, "pgpass")
        fd = os.open(self.passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("127.0.0.1:%d:*:%s:%s\n" % (self.port, self.user,
                                                self.password))
        self.resume()
        return self

    def _ctl(self, *args):
        data = os.path.join(self.dir, "data")
        opts = ("-c listen_addresses=127.0.0.1 -c port=%d "
                "-c unix_socket_directories=%s -c max_connections=100"
                % (self.port, self.dir))
        self._run(["pg_ctl", "-D", data, "-l", os.path.join(self.dir, "log"),
                   "-o", opts, "-w", "-t", "60"] + list(args))

    def halt(self):
        """Stop the server (fast: clients are disconnected), keeping its
        data; resume() starts it again."""
        self._ctl("-m", "fast", "stop")
        self.started = False

    def resume(self):
        """Start the server (again) on the same data and port; returns when
        it accepts connections."""
        self._ctl("start")
        self.started = True

    def restart(self):
        """Stop and start the server: every client connection is lost."""
        self.halt()
        self.resume()

    def url(self, db="postgres", password=True):
        """The connection URI of database db, with the password in it or
        not (then the client needs PGPASSFILE=self.passfile)."""
        if not password:
            return "postgresql://%s@127.0.0.1:%d/%s" % (self.user, self.port,
                                                        db)
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (
            self.user, self.password, self.port, db)

    def createdb(self, name, password=True):
        """A new database; its URL (see url())."""
        psql(self.url(password=False), 'CREATE DATABASE "%s"' % name,
             self.env())
        return self.url(name, password)

    def dropdb(self, name):
        """Drop database name, disconnecting its clients."""
        psql(self.url(password=False),
             'DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name, self.env())

    def env(self):
        """os.environ plus PGPASSFILE for this server."""
        return dict(os.environ, PGPASSFILE=self.passfile)

    def log(self):
        try:
            with open(os.path.join(self.dir, "log")) as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        """Stop the server and remove everything it had."""
        if self.started:
            self._run(["pg_ctl", "-D", os.path.join(self.dir, "data"),
                       "-m", "immediate", "-w", "stop"], check=False)
            self.started = False
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc):
        self.stop()
