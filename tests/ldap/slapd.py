"""A private OpenLDAP ``slapd`` for tests.

Starts Debian's slapd on 127.0.0.1 and a free high port with a throw-away
``slapd.conf`` and an mdb database in a temporary directory, and stops it
again. It loads the AD-shaped test schema in ``ad.schema`` and two overlays
real directories run: ``ppolicy`` (``pwdAccountLockedTime``; its default
policy is :data:`POLICY_DN`, which takes effect once a test adds that entry,
see ``seed.lockout_policy_ldif``) and ``refint``, which rewrites the
``member``, ``uniqueMember``, ``manager`` and ``memberOf`` values naming an
entry that is renamed or deleted, without changing the rewritten entries'
``modifyTimestamp`` (``refint=False`` leaves it out). With ``syncprov=True``
it also stacks the syncprov overlay (RFC 4533 content synchronisation, with
reload hints honoured). :meth:`Slapd.restart` stops and starts it on the same
port and database. Works as root (slapd then simply keeps root's uid;
nothing is written outside the directory) and unprivileged.

The service account ``cn=reader`` has a size limit of ``size_limit`` entries
per search, but no limit on paged searches (``size.prtotal=unlimited``),
like Active Directory's MaxPageSize; the rootdn has no limits at all.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import ldap3

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SCHEMA_DIR = Path("/etc/ldap/schema")
MODULE_DIR = Path("/usr/lib/ldap")
AD_SCHEMA = Path(__file__).with_name("ad.schema")

BASE_DN = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE_DN}"
READER_DN = f"cn=reader,{BASE_DN}"
ADMIN_PASSWORD = "admin-secret-1234"
READER_PASSWORD = "reader-secret-5678"
#: The DN-valued attributes refint keeps pointing at renamed entries.
REFINT_ATTRIBUTES = ("member", "uniqueMember", "manager", "memberOf")
#: ppolicy's default policy: absent (no policy) until a test adds it.
POLICY_DN = f"cn=lockout,ou=policies,{BASE_DN}"

_CONF = """\
include {schema}/core.schema
include {schema}/cosine.schema
include {schema}/inetorgperson.schema
include {ad_schema}
{root_dse}modulepath {modules}
moduleload back_mdb
moduleload ppolicy
{modules_extra}pidfile {work}/slapd.pid
argsfile {work}/slapd.args

database mdb
suffix "{base}"
rootdn "{admin}"
rootpw {admin_password}
directory {work}/db
maxsize 67108864
limits dn.exact="{reader}" size.soft={limit} size.hard={limit} size.prtotal={prtotal}
limits users size.soft={limit} size.hard={limit} size.prtotal={prtotal}
access to attrs=userPassword by self write by anonymous auth by * none
access to * by users read by * none
{overlays}overlay ppolicy
ppolicy_default "{policy}"
"""

_SYNCPROV = """\
index entryCSN,entryUUID eq
overlay syncprov
syncprov-checkpoint 10 1
syncprov-sessionlog 1000
syncprov-reloadhint TRUE
"""

_REFINT = """\
overlay refint
refint_attributes {attributes}
refint_nothing "{admin}"
"""

#: Served as part of the RootDSE (slapd's ``rootDSE`` directive): emulated AD attributes.
_ROOT_DSE_CONF = "rootDSE {path}\n"

_TLS_CONF = """\
TLSCertificateFile {cert}
TLSCertificateKeyFile {key}
"""


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Slapd:
    """A running slapd and how to reach it."""

    workdir: Path
    port: int
    process: subprocess.Popen[bytes]
    #: The ``ldaps://`` port, when started with a certificate.
    tls_port: int | None = None
    #: What slapd listens on (``-h``).
    listen: str = ""

    @property
    def root_dse_file(self) -> Path:
        return self.workdir / "rootdse.ldif"

    def restart(self, root_dse: dict[str, str] | None = None, *, down: float = 0.0) -> None:
        """Stop slapd (cleanly: it writes its contextCSN), wait ``down`` seconds, start it again.

        Same port, configuration and database; returns once it answers. New
        ``root_dse`` values apply only to a slapd started with ``root_dse``
        (slapd reads that file once, at start).
        """
        self.stop()
        if root_dse is not None:
            write_root_dse(self.root_dse_file, root_dse)
        time.sleep(down)
        for _ in range(50):  # the old socket may linger a moment
            self.process = _spawn(self.workdir, self.listen)
            if _wait_ready(self):
                return
            self.process.wait(timeout=10)
            time.sleep(0.1)
        raise RuntimeError(
            "slapd did not start again: "
            + (self.workdir / "slapd.log").read_text(errors="replace")[-2000:]
        )

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        assert self.tls_port is not None, "started without tls"
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def modify(self, ldif: str) -> None:
        """Apply LDIF change records (``changetype`` defaults to add) as the rootdn."""
        pwfile = self.workdir / "admin.pw"
        pwfile.write_text(ADMIN_PASSWORD)
        done = subprocess.run(
            ["ldapmodify", "-a", "-x", "-H", self.url, "-D", ADMIN_DN, "-y", str(pwfile)],
            input=ldif.encode(),
            capture_output=True,
            check=False,
            timeout=30,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ldapmodify failed: {done.stderr.decode(errors='replace')}")

    def admin(self) -> ldap3.Connection:
        """A connection bound as the rootdn."""
        server = ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE)
        return ldap3.Connection(server, ADMIN_DN, ADMIN_PASSWORD, auto_bind=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start(
    workdir: Path,
    *,
    size_limit: int = 50,
    paged_total: int | None = None,
    preload: Path | None = None,
    tls: tuple[Path, Path] | None = None,
    root_dse: dict[str, str] | None = None,
    syncprov: bool = False,
    refint: bool = True,
) -> Slapd:
    """Start slapd in ``workdir`` (which must exist) and wait until it answers.

    ``paged_total`` caps paged searches too (default: no cap), to provoke a
    truncated read. ``preload`` is an LDIF file loaded offline with slapadd
    first: far faster than adding over the wire, and it keeps the
    operational attributes (``modifyTimestamp``) the file sets. ``tls`` is
    a (certificate, key) pair of PEM files: StartTLS is then offered, and
    ``ldaps://`` listens on a second port. ``root_dse`` adds attributes to
    the RootDSE (names from ``ad.schema``, values as LDIF text): how the tests
    emulate a domain controller's ``highestCommittedUSN`` and the like; see
    :meth:`Slapd.restart` to change them. ``syncprov`` stacks that overlay;
    ``refint=False`` leaves refint out.
    """
    (workdir / "db").mkdir()
    last_error = ""
    loaded = preload is None
    for _ in range(3):  # the free port may be taken between finding and binding it
        port = free_port()
        tls_port = free_port() if tls else None
        conf = workdir / "slapd.conf"
        if root_dse is not None:
            write_root_dse(workdir / "rootdse.ldif", root_dse)
        conf.write_text(
            (_TLS_CONF.format(cert=tls[0], key=tls[1]) if tls else "")
            + _CONF.format(
                root_dse=_ROOT_DSE_CONF.format(path=workdir / "rootdse.ldif") if root_dse else "",
                schema=SCHEMA_DIR,
                ad_schema=AD_SCHEMA,
                modules=MODULE_DIR,
                work=workdir,
                base=BASE_DN,
                admin=ADMIN_DN,
                admin_password=ADMIN_PASSWORD,
                policy=POLICY_DN,
                modules_extra=("moduleload syncprov\n" if syncprov else "")
                + ("moduleload refint\n" if refint else ""),
                overlays=(_SYNCPROV if syncprov else "")
                + (
                    _REFINT.format(attributes=" ".join(REFINT_ATTRIBUTES), admin=ADMIN_DN)
                    if refint
                    else ""
                ),
                reader=READER_DN,
                limit=size_limit,
                prtotal="unlimited" if paged_total is None else paged_total,
            )
        )
        if not loaded:
            assert preload is not None
            subprocess.run(
                [str(SLAPADD), "-q", "-f", str(conf), "-l", str(preload)],
                check=True,
                capture_output=True,
                timeout=600,
            )
            loaded = True
        listen = f"ldap://127.0.0.1:{port}/"
        if tls_port is not None:
            listen += f" ldaps://127.0.0.1:{tls_port}/"
        (workdir / "slapd.log").write_bytes(b"")
        process = _spawn(workdir, listen)
        slapd = Slapd(workdir, port, process, tls_port, listen)
        if _wait_ready(slapd):
            return slapd
        slapd.stop()
        last_error = (workdir / "slapd.log").read_text(errors="replace")
    raise RuntimeError(f"slapd did not start: {last_error}")


def write_root_dse(path: Path, values: dict[str, str]) -> None:
    path.write_text("dn:\n" + "".join(f"{k}: {v}\n" for k, v in values.items()))


def _spawn(workdir: Path, listen: str) -> subprocess.Popen[bytes]:
    with (workdir / "slapd.log").open("ab") as log:
        return subprocess.Popen(
            [str(SLAPD), "-f", str(workdir / "slapd.conf"), "-h", listen, "-d", "0"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _wait_ready(slapd: Slapd, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if slapd.process.poll() is not None:
            return False
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", slapd.port), 0.2):
            return True
        time.sleep(0.05)
    return False
