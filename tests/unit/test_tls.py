"""``corral.tls``: what a server presents, what a client trusts, and the errors on the way;
and how the drivers hand an agent the certificate."""

from __future__ import annotations

import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from corral.agent.main import main as agent_main
from corral.client import _requests
from corral.core.model import Engine
from corral.drivers.base import CERTIFICATE_NAME, NodeSpec, agent_command, write_certificate_lines
from corral.drivers.libcloud import agent_user_data
from corral.errors import InvalidRequest
from corral.tls import (
    CERTIFICATE_FILE,
    ServerTLS,
    ensure_self_signed,
    make_self_signed,
    read_certificates,
    server_context,
    trusting,
)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("tls")
    certfile, keyfile = where / "cert.pem", where / "key.pem"
    make_self_signed(certfile, keyfile, ["127.0.0.1", "dispatcher.example"])
    return certfile, keyfile


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    where = tmp_path_factory.mktemp("stranger")
    certfile, keyfile = where / "cert.pem", where / "key.pem"
    make_self_signed(certfile, keyfile, ["127.0.0.1"])
    return certfile, keyfile


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> None:
    """A TLS handshake in memory; raises what the client's verification raises."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, from_client, server_hostname=name)
    server_side = server.wrap_bio(to_server, from_server, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, end in (("client", client_side), ("server", server_side)):
            if not done[side]:
                try:
                    end.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def test_a_pinned_certificate_is_trusted_whatever_the_name(pair: tuple[Path, Path]) -> None:
    server = server_context(*pair)
    pem = read_certificates(pair[0], "--tls-ca")
    handshake(server, trusting(pem), "127.0.0.1")
    handshake(server, trusting(pem), "dispatcher.example")
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(server, trusting(pem), "elsewhere.example")
    handshake(server, trusting(pem, check_hostname=False), "elsewhere.example")


def test_another_certificate_is_not_trusted(
    pair: tuple[Path, Path], stranger: tuple[Path, Path]
) -> None:
    other = read_certificates(stranger[0], "--tls-ca")
    for check_hostname in (True, False):
        with pytest.raises(ssl.SSLCertVerificationError):
            handshake(
                server_context(*pair), trusting(other, check_hostname=check_hostname), "127.0.0.1"
            )


def test_the_self_signed_key_is_private_and_the_certificate_public(
    pair: tuple[Path, Path],
) -> None:
    certfile, keyfile = pair
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(certfile.stat().st_mode) == 0o644
    assert "PRIVATE KEY" in keyfile.read_text()
    assert "PRIVATE KEY" not in certfile.read_text()


def test_only_the_certificates_of_a_file_are_read(pair: tuple[Path, Path], tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_text(pair[1].read_text() + pair[0].read_text())
    pem = read_certificates(both, "--tls-cert")
    assert "PRIVATE KEY" not in pem
    assert pem.strip() == pair[0].read_text().strip()
    tls = ServerTLS.load(both, None)  # the key in the certificate's file serves too
    assert tls.certificate == pem


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("no certificate here\n", "expected PEM certificates"),
        (
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
            "do not load",
        ),
    ],
    ids=["none", "garbled"],
)
def test_a_file_without_usable_certificates_is_refused_naming_it(
    tmp_path: Path, text: str, said: str
) -> None:
    path = tmp_path / "ca.pem"
    path.write_text(text)
    with pytest.raises(InvalidRequest, match=said) as caught:
        read_certificates(path, "--tls-ca")
    assert str(path) in caught.value.message
    assert caught.value.field == "--tls-ca"
    with pytest.raises(InvalidRequest, match="No such file"):
        read_certificates(tmp_path / "absent.pem", "--tls-ca")


def test_a_key_that_is_not_the_certificates_is_refused_naming_both(
    pair: tuple[Path, Path], stranger: tuple[Path, Path]
) -> None:
    with pytest.raises(InvalidRequest, match="cannot load the TLS certificate and key") as caught:
        server_context(pair[0], stranger[1])
    assert str(pair[0]) in caught.value.message
    assert str(stranger[1]) in caught.value.message
    with pytest.raises(InvalidRequest, match="cannot load"):
        server_context(pair[0], pair[0].with_name("absent.key"))


def test_the_client_trusts_what_it_is_given_else_the_home(
    pair: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path))
    monkeypatch.delenv("CORRAL_CA", raising=False)
    https = ["https://127.0.0.1:7480"]
    assert _requests.discover_trust(["http://127.0.0.1:7480"], pair[0]) is True
    assert _requests.discover_trust(https) is True  # nothing published: the system's CAs
    (tmp_path / CERTIFICATE_FILE).write_text(pair[0].read_text())
    published = _requests.discover_trust(https)
    assert isinstance(published, ssl.SSLContext)
    handshake(server_context(*pair), published, "127.0.0.1")
    given = _requests.discover_trust(https, pair[0])
    assert isinstance(given, ssl.SSLContext)
    handshake(server_context(*pair), given, "127.0.0.1")
    monkeypatch.setenv("CORRAL_CA", str(tmp_path / "absent.pem"))
    with pytest.raises(InvalidRequest, match=r"absent\.pem") as caught:
        _requests.discover_trust(https)
    assert caught.value.field == "CORRAL_CA"


def test_an_agent_is_pointed_at_the_certificate_its_driver_leaves(tmp_path: Path) -> None:
    spec = NodeSpec("n1", Engine("e"))
    plain = agent_command("python3", spec, "h:1", "s/token", "s")
    assert "--tls-ca" not in plain
    argv = agent_command("python3", spec, "h:1", "s/token", "s", tls=True)
    assert argv[-2:] == ["--tls-ca", f"s/{CERTIFICATE_NAME}"]
    pem = "-----BEGIN CERTIFICATE-----\nAB'C$(x)\n-----END CERTIFICATE-----\n"
    assert write_certificate_lines("s", None) == []
    script = "\n".join(write_certificate_lines(str(tmp_path), pem))
    subprocess.run(["/bin/sh", "-c", script], check=True)
    assert (tmp_path / CERTIFICATE_NAME).read_text() == pem
    userdata = agent_user_data(spec, "h:1", "tok", "python3", "/var/lib/corral", pem)
    assert "--tls-ca /var/lib/corral/dispatcher.pem" in userdata
    assert "dispatcher.pem" not in agent_user_data(spec, "h:1", "tok", "python3", "/d")


def test_an_agent_given_no_usable_certificate_stops_with_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text("t\n")
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello\n")
    argv = ["--dispatcher", "127.0.0.1:9", "--token-file", str(token), "--tls-ca", str(not_pem)]
    with pytest.raises(SystemExit) as exited:
        agent_main([*argv, "--state-dir", str(tmp_path / "state")])
    assert exited.value.code == 2
    assert "--tls-ca" in capsys.readouterr().err
    assert not (tmp_path / "state").exists()


def test_the_self_signed_pair_is_made_once_and_again_for_a_new_address(tmp_path: Path) -> None:
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    assert ensure_self_signed(certfile, keyfile, ["127.0.0.1", "0.0.0.0"])
    first = certfile.read_text()
    assert not ensure_self_signed(certfile, keyfile, ["127.0.0.1", "::"])
    assert certfile.read_text() == first  # kept: clients that trust it go on trusting it
    assert ensure_self_signed(certfile, keyfile, ["10.1.2.3"])
    handshake(server_context(certfile, keyfile), trusting(certfile.read_text()), "10.1.2.3")
    handshake(server_context(certfile, keyfile), trusting(certfile.read_text()), "localhost")
