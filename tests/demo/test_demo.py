"""README command 1 as a newcomer runs it: scripts/demo.sh, then a browser clicks through.

The demo's own script, configuration and sandbox (scripts/demo.sh,
examples/, scripts/sandbox.py), on free ports on 127.0.0.1: the examples are
copied to a temporary directory with the sandbox's port put in (the demo's
state then lives next to that copy, not in the checkout's ``state/``), and
the script is told the ports and to install nothing. Headless Chromium
(Playwright) signs in as the granted user, clicks the AlexisHR tile, and
lands on the sandbox's ACS page, which checked the signed SAML Response with
pysaml2 against the IdP metadata; the contractor outside the bound group is
refused. The sandbox's ACS refuses a tampered and an unsigned Response. The
script is then run a second time on the same state, as README says it can be.
Screenshots go to ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, CookieJar
from lxml import etree

from tests.sso.stack import form_action, free_port, hidden_fields
from tests.support.chromium import ARTIFACTS, CHROMIUM, FLAGS, needs_chromium

REPO = Path(__file__).resolve().parents[2]
#: The demo users and passwords README and examples/directory.yaml document.
GRANTED = ("alice", "correct horse battery staple", "Alice Lindqvist")
REFUSED = ("hanna.kowalski", "contractor demo password", "Hanna Kowalski")
SIGNED_IN = "You are signed in to the AlexisHR sandbox as {}."
DSIG = "{http://www.w3.org/2000/09/xmldsig#}Signature"

pytestmark = [
    pytest.mark.slow,
    needs_chromium,
    pytest.mark.skipif(shutil.which("xmlsec1") is None, reason="xmlsec1 is not installed"),
    pytest.mark.skipif(
        not (REPO / ".venv" / "bin" / "provisiond").exists(),
        reason="scripts/demo.sh runs from the checkout's .venv",
    ),
]


class Demo:
    """``bash scripts/demo.sh`` in its own process group, its output collected."""

    def __init__(self, examples: Path, ports: dict[str, int]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISIOND_")}
        env.update(
            DEMO_CONFIG=str(examples / "alexishr.yaml"),
            DEMO_SKIP_INSTALL="1",
            DEMO_SANDBOX_PORT=str(ports["sandbox"]),
            DEMO_PORTAL_PORT=str(ports["portal"]),
            DEMO_OPS_PORT=str(ports["ops"]),
        )
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            ["bash", "scripts/demo.sh"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            if self.proc.poll() is not None:
                self.reader.join(5)
                if re.search(pattern, self.output):
                    return
                pytest.fail(f"demo.sh exited {self.proc.returncode}:\n{self.output}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} from demo.sh in {timeout} s:\n{self.output}")
            time.sleep(0.1)

    def stop(self) -> int:
        """SIGTERM to the script, as Ctrl-C would: it stops the daemon and the sandbox."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.reader.join(5)
        # Nothing the script started may outlive it.
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGKILL)
        pytest.fail(f"demo.sh left processes running:\n{self.output}")


@pytest.fixture
def demo_dirs(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """The examples on free ports: the sandbox's port in the configuration, the rest by env."""
    ports = {"sandbox": free_port(), "portal": free_port(), "ops": free_port()}
    examples = tmp_path / "examples"
    shutil.copytree(REPO / "examples", examples)
    config = examples / "alexishr.yaml"
    text = config.read_text()
    # The SCIM base URL and the ACS URL: both are the sandbox.
    assert "base_url: http://127.0.0.1:8765 " in text
    assert "acs_url: http://127.0.0.1:8765/login/callback?connection=nordlys" in text
    config.write_text(text.replace("127.0.0.1:8765", f"127.0.0.1:{ports['sandbox']}"))
    return examples, ports


@pytest.fixture
def demo(demo_dirs: tuple[Path, dict[str, int]]) -> Iterator[Demo]:
    running = Demo(*demo_dirs)
    try:
        running.wait_for(r"==> the daemon runs")
        running.wait_for(r'"event": "cycle finished", "result": "ok"')
        yield running
    finally:
        running.stop()


async def _signed_response(portal: str, username: str, password: str) -> tuple[str, str]:
    """Sign in over HTTP and open AlexisHR: the ACS URL and the signed SAMLResponse."""
    async with ClientSession(cookie_jar=CookieJar(unsafe=True)) as browser:
        login = hidden_fields(await (await browser.get(f"{portal}/login")).text())
        done = await browser.post(
            f"{portal}/login",
            data={**login, "username": username, "password": password},
            allow_redirects=False,
        )
        assert done.status == 303, await done.text()
        page = await (await browser.get(f"{portal}/saml2/alexishr")).text()
        return form_action(page), hidden_fields(page)["SAMLResponse"]


async def _post_to_acs(acs: str, saml_response: str) -> tuple[int, str]:
    async with ClientSession() as client:
        answer = await client.post(acs, data={"SAMLResponse": saml_response})
        return answer.status, await answer.text()


def _tampered(saml_response: str) -> str:
    """The same signed Response, naming another person."""
    xml = base64.b64decode(saml_response)
    assert b"alice.lindqvist@nordlys.example" in xml
    return base64.b64encode(
        xml.replace(b"alice.lindqvist@nordlys.example", b"johanna.berg@nordlys.example")
    ).decode()


def _unsigned(saml_response: str) -> str:
    """The same Response with every signature taken out."""
    root = etree.fromstring(base64.b64decode(saml_response))
    signatures = list(root.iter(DSIG))
    assert len(signatures) == 2  # the Response's and the Assertion's
    for signature in signatures:
        signature.getparent().remove(signature)
    return base64.b64encode(etree.tostring(root)).decode()


async def test_sign_in_through_the_portal_into_the_sandbox(demo, demo_dirs):
    async_playwright = pytest.importorskip("playwright.async_api").async_playwright
    _, ports = demo_dirs
    portal = f"http://127.0.0.1:{ports['portal']}"
    sandbox = f"http://127.0.0.1:{ports['sandbox']}"
    # What the script tells the newcomer.
    assert f"portal:      {portal}" in demo.output
    assert "alice / correct horse battery staple" in demo.output
    assert "hanna.kowalski / contractor demo password" in demo.output
    assert "11 object(s) to change" in demo.output  # the plan of the first cycle
    assert f"console:     {portal}/admin" in demo.output
    ARTIFACTS.mkdir(exist_ok=True)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(f"{portal}/")
            assert "/login" in page.url
            await page.screenshot(path=ARTIFACTS / "demo-1-login.png")
            assert (await page.inner_text("header.brand")).strip() == "Nordlys"
            await page.get_by_label("Username or email").fill(GRANTED[0])
            await page.get_by_label("Password").fill(GRANTED[1])
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(f"{portal}/")
            assert f"Signed in as {GRANTED[2]}." in await page.inner_text("main")
            await page.screenshot(path=ARTIFACTS / "demo-2-portal.png")

            async with page.expect_navigation(url=f"{sandbox}/login/callback**"):
                await page.get_by_role("link", name="Open AlexisHR").click()
            await page.screenshot(path=ARTIFACTS / "demo-3-sandbox-acs.png")
            assert await page.inner_text("#signed-in") == SIGNED_IN.format(GRANTED[2])
            assert await page.inner_text("#nameid") == "alice.lindqvist@nordlys.example"
            assert "SCIM id" in await page.inner_text("#employee")  # provisioned, by the cycle

            # alice is in Engineering, the demo's admin group: the console is hers.
            response = await page.goto(f"{portal}/admin")
            assert response is not None and response.status == 200
            assert await page.inner_text("h1") == "Overview"

            # From AlexisHR's side: the sandbox's "Sign in with SSO", an SP-initiated request.
            other = await (await browser.new_context()).new_page()
            await other.goto(f"{sandbox}/")
            async with other.expect_navigation(url=f"{portal}/login?**"):
                await other.get_by_role("link", name="Sign in with SSO").click()
            heading = await other.inner_text("h1")
            await other.screenshot(path=ARTIFACTS / "demo-4-continue-to-alexishr.png")
            assert heading == "Sign in to continue to AlexisHR"

            # The contractor: her portal has no AlexisHR, and AlexisHR refuses in plain words.
            await other.get_by_label("Username or email").fill(REFUSED[0])
            await other.get_by_label("Password").fill(REFUSED[1])
            await other.get_by_role("button", name="Sign in").click()
            await other.wait_for_load_state()
            await other.screenshot(path=ARTIFACTS / "demo-5-refused.png")
            assert await other.inner_text("h1") == "No access to AlexisHR"
            text = await other.inner_text("main")
            assert f"You have no access to AlexisHR. You are signed in as {REFUSED[2]};" in text
            await other.get_by_role("link", name="Back to your applications").click()
            await other.wait_for_url(f"{portal}/")
            assert await other.get_by_role("link", name="Open AlexisHR").count() == 0
            assert "No applications are assigned to you yet" in await other.inner_text("main")
            response = await other.goto(f"{portal}/admin")  # not in the admin group
            assert response is not None and response.status == 403

            # A tampered Response posted to the sandbox's ACS: refused, with a page saying so.
            acs, signed = await _signed_response(portal, *GRANTED[:2])
            forged = await (await browser.new_context()).new_page()
            await forged.set_content(
                f'<form method="post" action="{acs}"><input type="hidden" name="SAMLResponse" '
                f'value="{_tampered(signed)}"><button>Post</button></form>'
            )
            async with forged.expect_navigation(url=f"{sandbox}/login/callback**"):
                await forged.get_by_role("button", name="Post").click()
            await forged.screenshot(path=ARTIFACTS / "demo-6-tampered-refused.png")
            assert await forged.inner_text("h1") == "Sign-in refused"
        finally:
            await browser.close()


async def test_the_sandbox_acs_refuses_a_tampered_or_unsigned_response(demo, demo_dirs):
    _, ports = demo_dirs
    acs, signed = await _signed_response(f"http://127.0.0.1:{ports['portal']}", *GRANTED[:2])
    assert acs == f"http://127.0.0.1:{ports['sandbox']}/login/callback?connection=nordlys"
    for bad in (_tampered(signed), _unsigned(signed), "bm90IFNBTUw=", ""):
        status, text = await _post_to_acs(acs, bad)
        assert status == 400, text
        assert "Sign-in refused" in text
        assert "signed in to the AlexisHR sandbox" not in text
    status, text = await _post_to_acs(acs, signed)
    assert status == 200, text
    assert SIGNED_IN.format(f"<strong>{GRANTED[2]}</strong>") in text
    # The sandbox says why, in its log.
    log = (demo_dirs[0].parent / "state" / "alexishr-sandbox.log").read_text()
    assert "SAML Response refused" in log


async def test_the_demo_runs_again_on_its_own_state(demo_dirs):
    examples, ports = demo_dirs
    first = Demo(examples, ports)
    try:
        first.wait_for(r"==> the daemon runs")
    finally:
        assert first.stop() == 143
    assert "making the demo's SAML signing key" in first.output
    again = Demo(examples, ports)
    try:
        again.wait_for(r"==> the daemon runs")
        again.wait_for(r'"event": "cycle finished", "result": "ok"')
        # The state started afresh (the sandbox keeps nothing), the key was kept.
        assert "making the demo's SAML signing key" not in again.output
        assert "11 object(s) to change" in again.output
        acs, signed = await _signed_response(f"http://127.0.0.1:{ports['portal']}", *GRANTED[:2])
        status, text = await _post_to_acs(acs, signed)
        assert status == 200, text
    finally:
        assert again.stop() == 143


@pytest.fixture
def lone_sandbox(tmp_path: Path) -> Iterator[int]:
    """scripts/sandbox.py on its own, its IdP metadata URL on a port nobody serves."""
    token = tmp_path / "token"
    token.write_text("sandbox-token-1234\n")
    port, idp = free_port(), free_port()
    sandbox = subprocess.Popen(
        [
            str(REPO / ".venv" / "bin" / "python"),
            str(REPO / "scripts" / "sandbox.py"),
            *("--port", str(port), "--token-file", str(token)),
            *("--idp-metadata", f"http://127.0.0.1:{idp}/saml2/alexishr/metadata"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert sandbox.stdout is not None
        assert "AlexisHR sandbox: SCIM and sign-in on" in sandbox.stdout.readline()
        yield port
    finally:
        sandbox.terminate()
        assert sandbox.wait(10) == 0


async def test_the_sandbox_says_so_when_provisiond_is_not_running(lone_sandbox):
    """The sandbox on its own: bad input to its ACS, and an IdP that does not answer."""
    acs = f"http://127.0.0.1:{lone_sandbox}/login/callback?connection=nordlys"
    async with ClientSession() as client:
        down = await client.post(acs, data={"SAMLResponse": "eA=="})
        assert down.status == 503
        assert "provisiond is not reachable" in await down.text()
        assert (await client.post(acs, data={"other": "x"})).status == 400
        assert (await client.get(acs)).status == 405
        # SCIM still wants its token.
        assert (await client.get(f"http://127.0.0.1:{lone_sandbox}/Users")).status == 401
