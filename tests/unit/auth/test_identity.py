"""Identity headers, spoofable-header detection, Authorization parsing."""

from __future__ import annotations

import json

import pytest

from edgerules.auth.identity import (
    IDENTITY_HEADERS,
    AuthFailure,
    Identity,
    IdentityHeaderNames,
    identity_headers,
    is_spoofable_header,
    parse_authorization,
    safe_header_value,
)

IDENT = Identity(user="u1", role="admin", permissions=("read", "a,b"), method="jwt", principal="jwt:u1")


def test_identity_headers_values() -> None:
    headers = dict(identity_headers(IDENT, now=1_700_000_000.5))
    assert headers["X-User-ID"] == "u1"
    assert headers["X-User-Role"] == "admin"
    assert json.loads(headers["X-User-Permissions"]) == ["read", "a,b"]
    assert headers["X-Authenticated-At"] == "2023-11-14T22:13:20.500Z"


def test_identity_headers_custom_names() -> None:
    names = IdentityHeaderNames(
        user="X-Principal", role="X-Role", permissions="X-Perms", authenticated_at="X-At"
    )
    assert [n for n, _ in identity_headers(IDENT, names, now=0)] == [
        "X-Principal",
        "X-Role",
        "X-Perms",
        "X-At",
    ]


def test_identity_headers_mapping_names_and_positional_now() -> None:
    names = {"user": "X-U", "role": "X-R", "permissions": "X-P", "authenticated_at": "X-A"}
    got = dict(identity_headers(IDENT, names, 0.0))
    assert got == {"X-U": "u1", "X-R": "admin", "X-P": '["read","a,b"]', "X-A": "1970-01-01T00:00:00.000Z"}


def test_identity_headers_refuse_unsafe_values() -> None:
    bad = Identity(user="u1", role="admin\r\nX-Evil: 1", permissions=(), method="api_key", principal="key:x")
    with pytest.raises(AuthFailure) as info:
        identity_headers(bad, now=0)
    assert info.value.reason == "bad_claim"


@pytest.mark.parametrize(
    "name",
    [
        "X-User-ID",
        "x-user-id",
        "X_USER_ID",
        "x_user_id",
        "X-User-Anything",
        "x_user_role",
        "X-Authenticated-At",
        "x_authenticated_at",
        " X-User-Id ",
    ],
)
def test_spoofable(name: str) -> None:
    assert is_spoofable_header(name, IDENTITY_HEADERS.all())


@pytest.mark.parametrize("name", ["X-Userid", "User-Agent", "X-Request-ID", "Authorization", "X-Users"])
def test_not_spoofable(name: str) -> None:
    assert not is_spoofable_header(name, IDENTITY_HEADERS.all())


def test_spoofable_custom_protected_names() -> None:
    assert is_spoofable_header("x_principal", ["X-Principal"])
    assert not is_spoofable_header("x_principal", IDENTITY_HEADERS.all())
    assert is_spoofable_header("X_Auth_Token", ["x-auth-*"])
    assert is_spoofable_header("x-auth-", ["x-auth-*"])
    assert not is_spoofable_header("X-Authority", ["x-auth-*"])


@pytest.mark.parametrize(
    "value, ok",
    [
        ("admin", True),
        ("Jos\u00e9 O'Neil", True),
        ("a\r\nb", False),
        ("a\nb", False),
        ("a\x00", False),
        ("a\x7f", False),
        ("a\u2028b", False),
        ("a\x85b", False),
        (" admin", False),
        ("admin\t", False),
        ("x" * 1025, False),
        (42, False),
        (None, False),
    ],
)
def test_safe_header_value(value: object, ok: bool) -> None:
    assert safe_header_value(value) is ok


def test_parse_authorization_ok() -> None:
    assert parse_authorization(["Bearer abc.def.ghi"]) == ("bearer", "abc.def.ghi")
    assert parse_authorization(["bearer abc"]) == ("bearer", "abc")
    assert parse_authorization(["API-Key er_abc-_x"]) == ("api-key", "er_abc-_x")
    assert parse_authorization(["api-key k"], schemes={"Bearer", "API-Key"}) == ("api-key", "k")


@pytest.mark.parametrize(
    "values, why",
    [
        ([], "missing"),
        (["Bearer a", "Bearer a"], "duplicate_header"),
        (["Bearer a", "API-Key b"], "duplicate_header"),
        (["Bearer"], "malformed_authorization"),
        (["Bearer "], "malformed_authorization"),
        (["Bearer  abc"], "malformed_authorization"),
        ([" Bearer abc"], "malformed_authorization"),
        (["Bearer abc "], "malformed_authorization"),
        (["Bearer\tabc"], "malformed_authorization"),
        (["Bearer abc\n"], "malformed_authorization"),
        (["Bearer a, API-Key b"], "malformed_authorization"),
        (["Bearer a,b"], "malformed_authorization"),
        (["Bearer abc def"], "malformed_authorization"),
        (["Bearer ab\x00c"], "malformed_authorization"),
        (["Bearer " + "a" * 20_000], "too_long"),
        (["Basic dXNlcjpwYXNz"], "unsupported_scheme"),
    ],
)
def test_parse_authorization_refusals(values: list[str], why: str) -> None:
    with pytest.raises(AuthFailure) as info:
        parse_authorization(values, schemes={"bearer", "api-key"})
    assert info.value.reason == why
