"""``corral serve --tls``: the API and the agent port speak TLS, and everyone finds the
certificate: the CLI and the client in the home, the agents from their driver."""

from __future__ import annotations

import asyncio
import contextlib
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import CONFIG, Served, run_cli, serve_once
from corral import Client
from corral.errors import InvalidRequest, Unavailable
from corral.queue.client import BlockingQueueClient
from corral.tls import CERTIFICATE_FILE, KEY_FILE, make_self_signed, trusting
from corral.wire.codec import open_connection
from corral.wire.handshake import AuthenticationFailed, new_hello, send_hello
from corral.wire.messages import AGENT_REALM, PROTOCOL_VERSION


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    server = Served(tmp_path_factory.mktemp("tls") / "home", CONFIG)
    server.argv += ["--tls", "--queue", "127.0.0.1:0"]
    server.start()
    try:
        server.wait_nodes()
        yield server
    finally:
        with contextlib.suppress(Exception):
            server.stop()


def test_the_cli_runs_a_process_over_https_with_the_certificate_of_the_home(
    served: Served,
) -> None:
    assert served.url.startswith("https://127.0.0.1:")
    home = served.home
    assert stat.S_IMODE((home / KEY_FILE).stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in (home / CERTIFICATE_FILE).read_text()
    for command in (
        "definition create hello --exec /bin/echo --arg over-tls",
        "process schedule tls-1 hello",
        "process wait tls-1 --timeout 20",
    ):
        run = run_cli(home, command)
        assert run.code == 0, run
    assert run_cli(home, "process logs tls-1").out == "over-tls\n"


def test_the_agents_dial_over_tls_and_the_agent_port_speaks_nothing_else(
    served: Served,
) -> None:
    (node_dir,) = (served.home / "nodes").iterdir()
    pinned = (node_dir / "dispatcher.pem").read_text()
    assert pinned == (served.home / CERTIFICATE_FILE).read_text()
    host, _, port = (served.home / "agent_address").read_text().strip().rpartition(":")

    async def introduce(tls: bool) -> None:
        context = trusting(pinned, check_hostname=False) if tls else None
        conn = await open_connection(host, int(port), ssl=context)
        try:
            hello = new_hello(PROTOCOL_VERSION, AGENT_REALM, "intruder", "intruder")
            await asyncio.wait_for(send_hello(conn, "not-the-secret", hello), 10)
        finally:
            # Waited for: a TLS close left to the loop's end leaks its socket (ResourceWarning).
            await asyncio.wait_for(conn.aclose(), 10)

    # Over TLS the hub answers (and the wrong secret is caught by the proof) ...
    with pytest.raises(AuthenticationFailed, match="wrong secret"):
        asyncio.run(introduce(tls=True))
    # ... in clear it never gets as far as answering.
    with pytest.raises(Exception) as plain:  # noqa: PT011 (closed, reset or refused: any)
        asyncio.run(introduce(tls=False))
    assert "wrong secret" not in str(plain.value)


def test_a_client_that_does_not_trust_the_certificate_says_how_to(
    served: Served, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"  # a home without the certificate
    elsewhere.mkdir()
    run = run_cli(elsewhere, f"--url {served.url} --token {served.token} node list")
    assert run.code == 1
    assert "does not trust" in run.err
    assert "--ca" in run.err
    assert len(run.err.splitlines()) == 1
    given = run_cli(
        elsewhere,
        f"--url {served.url} --token {served.token} --ca {served.home / CERTIFICATE_FILE}"
        " node list --json",
    )
    assert given.code == 0, given
    assert len(given.json()) == 1
    run = run_cli(elsewhere, f"--url {served.url.replace('https:', 'http:')} node list")
    assert run.code == 1
    assert "https://" in run.err


def test_the_python_client_takes_the_certificate_as_ca(served: Served, tmp_path: Path) -> None:
    certificate = served.home / CERTIFICATE_FILE
    with Client(served.url, served.token, ca=certificate) as client:
        assert [n["engine"] for n in client.list_nodes()] == ["default"]
    with httpx.Client(timeout=5) as plain, pytest.raises(httpx.ConnectError, match="VERIFY"):
        plain.get(f"{served.url}/health")
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("hello\n")
    with pytest.raises(InvalidRequest, match="expected PEM certificates"):
        Client(served.url, served.token, ca=not_a_certificate)
    plain_url = served.url.replace("https:", "http:")
    with Client(plain_url, served.token) as client, pytest.raises(Unavailable, match="https"):
        client.list_nodes()


def test_a_certificate_of_ones_own_is_served_and_published_without_its_key(
    tmp_path: Path,
) -> None:
    certfile, keyfile = tmp_path / "server.pem", tmp_path / "server.key"
    make_self_signed(certfile, keyfile, ["127.0.0.1", "localhost"])
    both = tmp_path / "both.pem"  # a key in the certificate's own file: never published
    both.write_text(certfile.read_text() + keyfile.read_text())
    server = Served(tmp_path / "home", CONFIG)
    server.argv += ["--tls-cert", str(both), "--listen", "0.0.0.0:0"]
    server.argv.remove("127.0.0.1:0")
    server.argv.remove("--listen")
    server.start()
    try:
        server.wait_nodes()  # agents dial over TLS with it, and beyond loopback needs no flag
        published = (server.home / CERTIFICATE_FILE).read_text()
        assert published.strip() == certfile.read_text().strip()
        assert not (server.home / KEY_FILE).exists()
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--tls-key", "k.pem"], "--tls-key needs --tls-cert"),
        (["--tls", "--tls-cert", "c.pem"], "give --tls or --tls-cert"),
        (["--tls-cert", "/nonexistent.pem"], "cannot load /nonexistent.pem"),
        (["--tls-cert", "/etc/hostname"], "cannot load the TLS certificate and key"),
    ],
    ids=["key-alone", "both-kinds", "missing", "not-pem"],
)
def test_a_wrong_tls_option_is_one_clear_line(tmp_path: Path, args: list[str], said: str) -> None:
    done = serve_once(tmp_path, *args)
    assert done.returncode in (1, 2), done.stderr
    assert said in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "url").exists()


def test_the_dispatchers_queue_speaks_tls_too(served: Served) -> None:
    found = re.search(r"event queue on 127\.0\.0\.1:(\d+)", served.log_tail(200))
    assert found is not None, served.log_tail()
    secret = (served.home / "queue_secret").read_text().strip()
    pinned = trusting((served.home / CERTIFICATE_FILE).read_text(), check_hostname=False)
    client = BlockingQueueClient("127.0.0.1", int(found[1]), secret, tls=pinned)
    try:
        client.connect()
        assert client.put("tls", [("ping", {}, False)])
    finally:
        client.close()
    plain = BlockingQueueClient("127.0.0.1", int(found[1]), secret)
    try:
        with pytest.raises(Unavailable):
            plain.connect(timeout=3)
    finally:
        plain.close()
