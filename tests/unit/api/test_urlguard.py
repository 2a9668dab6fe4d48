"""Webhook URLs: only http(s) to public addresses, in every spelling an address can take."""

from __future__ import annotations

import pytest

from api.urlguard import AllowList, RefusedUrl, check_webhook_url

NOTHING = AllowList.parse([])

REFUSED = [
    # loopback, in decimal, hex, octal and short forms, and inside IPv6
    "http://127.0.0.1/",
    "http://localhost:8080/hook",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://017700000001/",
    "http://0177.0.0.1/",
    "http://127.1/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
    # private
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://192.168.1.1/",
    "http://[fc00::1]/",
    "http://[::ffff:10.0.0.1]/",
    # link-local and cloud metadata
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",
    "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 of 169.254.169.254
    "http://100.100.100.200/",
    # shared, reserved, multicast, unspecified
    "http://100.64.0.1/",
    "http://240.0.0.1/",
    "http://224.0.0.1/",
    "http://0.0.0.0/",
    "http://0/",
    "http://[::]/",
    # not http(s), credentials, no host
    "ftp://8.8.8.8/",
    "file:///etc/passwd",
    "gopher://8.8.8.8/",
    "http://user:secret@8.8.8.8/",
    "http:///nohost",
    "http://8.8.8.8:99999/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_refused(url: str) -> None:
    with pytest.raises(RefusedUrl):
        check_webhook_url(url, NOTHING)


@pytest.mark.parametrize(
    "url", ["http://8.8.8.8/hook", "https://1.1.1.1:8443/x?y=1", "http://[2606:4700::1111]/"]
)
def test_public_addresses_pass(url: str) -> None:
    assert check_webhook_url(url, NOTHING)


def test_the_allow_list_takes_hosts_and_networks() -> None:
    assert check_webhook_url("http://127.0.0.1:9/", AllowList.parse(["127.0.0.1"]))
    assert check_webhook_url("http://10.1.2.3/", AllowList.parse(["10.0.0.0/8"]))
    assert check_webhook_url("http://localhost:9/", AllowList.parse(["localhost"]))
    with pytest.raises(RefusedUrl):
        check_webhook_url("http://10.1.2.3/", AllowList.parse(["192.168.0.0/16", "example.com"]))


def test_a_long_url_is_refused() -> None:
    with pytest.raises(RefusedUrl, match="longer"):
        check_webhook_url("http://8.8.8.8/" + "a" * 3000, NOTHING)
