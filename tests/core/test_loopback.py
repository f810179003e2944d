import pytest

from daemon.loopback import is_loopback_address, is_loopback_host, is_loopback_host_header


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("localhost", False),  # a name, not an address
        ("not an address", False),
    ],
)
def test_addresses(text: str, expected: bool) -> None:
    assert is_loopback_address(text) is expected


def test_hosts_and_host_headers() -> None:
    assert is_loopback_host("localhost") and is_loopback_host("LOCALHOST.")
    assert not is_loopback_host("localhost.example.com")
    assert is_loopback_host_header("localhost:9464")
    assert is_loopback_host_header("[::1]:9464")
    assert is_loopback_host_header("127.0.0.1")
    assert not is_loopback_host_header("evil.example:9464")
    assert not is_loopback_host_header("[::1")
