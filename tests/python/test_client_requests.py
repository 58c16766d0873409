"""The official Python SDK's signer checks every request our Rust client really sent.

The client and the emulator share one Rust signer, so client-against-emulator tests only
check our code against itself. Here the emulator's request log (`--request-log`, written by
`client_requests_are_logged_for_the_official_sdk` in tests/emulator_client.rs to the file
named by $ECS_CLIENT_REQUESTS) holds each request as it arrived: method, path, raw query,
headers, body. For each one the SDK's own signer (`volcenginesdkcore.signv4.SignerV4.sign`,
what its sign-request interceptor calls) signs the same request again, with the same
credentials, and must produce the Authorization header the client sent, byte for byte.

What the SDK is given, all read from the wire: the method and path; the raw query decoded
as form data (`+` is a space, `%XX` a byte; the SDK then encodes it its own way); every
received header but Authorization, with its name in the SDK's spelling (`x-date` ->
`X-Date`: HTTP/1 names are case-insensitive and hyper hands them over lowercase); the body;
X-Date pins the SDK's clock; X-Security-Token is the session token; the region comes from
the credential scope. The SDK computes the body hash, picks the headers to sign, builds the
canonical request and the signature; the X-Date, X-Content-Sha256 and X-Security-Token it
sets must equal what was sent too.

Credentials: AK/SK/token are the constants WIRE_AK / WIRE_SK / WIRE_TOKEN of
tests/emulator_client.rs (keep both files in step).

Skipped only when $ECS_CLIENT_REQUESTS is unset; a set variable naming a missing or empty
file fails. scripts/test.sh (wire tier) sets it and runs the Rust test first.
"""

import base64
import json
import os
from urllib.parse import parse_qsl

import pytest
from volcenginesdkcore.signv4 import SignerV4

from sdk_pin import pin_sdk

WIRE_AK = "AKLTwire-check"
WIRE_SK = "wire-check-secret"
WIRE_TOKEN = "STS2eyJ3aXJlIjoiY2hlY2sifQ+/a="
SERVICE = "ecs"
# Every action the client has (volcengine_ecs::model::Action::ALL); the Rust test calls each.
ACTIONS = {"RunInstances", "DescribeInstances", "DeleteInstances", "DeleteInstance",
           "StopInstances", "StartInstances", "ModifyInstanceAttribute", "UntagResources",
           "TagResources"}
MIN_REQUESTS = 14


def _log_path():
    path = os.environ.get("ECS_CLIENT_REQUESTS")
    if not path:
        pytest.skip("ECS_CLIENT_REQUESTS is not set (scripts/test.sh wire sets it)")
    return path


@pytest.fixture(scope="module")
def requests():
    path = _log_path()
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        pytest.fail(f"ECS_CLIENT_REQUESTS={path} is missing or empty: run "
                    "`cargo test --test emulator_client client_requests_are_logged` with it set")
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    # The admin API (/_emulator/...) is unsigned; everything else is the real API.
    return [r for r in lines if not r["path"].startswith("/_emulator/")]


def _sdk_name(name):
    """`x-content-sha256` -> `X-Content-Sha256`: the spelling the SDK's header dict uses."""
    return "-".join(part.capitalize() for part in name.split("-"))


def _headers(rec):
    out = []
    for h in rec["headers"]:
        name, value = h[0], h[1]
        if len(h) == 3:
            assert h[2] == "base64"
            value = base64.b64decode(value).decode("latin-1")
        out.append((name, value))
    return out


class _Quiet:
    def debug_sign(self, *args, **kwargs):
        pass


def sdk_resign(monkeypatch, rec):
    """What the SDK's signer makes of this request: (headers after signing, query pairs)."""
    received = _headers(rec)
    names = [n for n, _ in received]
    dups = {n for n in names if names.count(n) > 1}
    assert not dups, f"header sent twice: {dups}"
    wire = dict(received)
    assert "authorization" in wire, f"request {rec['seq']} is not signed"
    raw_query = rec["query"] or ""
    query = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=bool(raw_query),
                      encoding="utf-8", errors="strict")
    keys = [k for k, _ in query]
    # The SDK signs dict(query): a repeated key would silently lose all but one value.
    assert len(set(keys)) == len(keys), f"repeated query key in {raw_query}"
    scope = wire["authorization"].split("Credential=")[1].split(",")[0].split("/")
    assert len(scope) == 5 and scope[3] == SERVICE and scope[4] == "request", scope
    region = scope[2]
    headers = {_sdk_name(n): v for n, v in received if n != "authorization"}
    body = base64.b64decode(rec["body_base64"]).decode("utf-8")
    pin_sdk(monkeypatch, wire["x-date"], _Quiet())
    SignerV4.sign(rec["path"], rec["method"], headers, body, None, query,
                  WIRE_AK, WIRE_SK, region, SERVICE, wire.get("x-security-token"))
    return wire, headers, query


def test_sdk_signer_agrees_with_every_client_request(monkeypatch, requests):
    assert len(requests) >= MIN_REQUESTS, f"only {len(requests)} client requests logged"
    actions, with_token, encoded, failures = set(), 0, 0, []
    for rec in requests:
        with monkeypatch.context() as m:
            wire, signed, query = sdk_resign(m, rec)
        action = dict(query).get("Action", "")
        actions.add(action)
        with_token += "x-security-token" in wire
        encoded += any(c in (rec["query"] or "") for c in "%+")
        for name, sdk_value in [("authorization", signed["Authorization"]),
                                ("x-date", signed["X-Date"]),
                                ("x-content-sha256", signed["X-Content-Sha256"])] + (
                [("x-security-token", signed["X-Security-Token"])]
                if "x-security-token" in wire else []):
            if wire.get(name) != sdk_value:
                failures.append(f"request {rec['seq']} ({action}) {rec['uri']}\n"
                                f"  {name} sent: {wire.get(name)}\n  {name} SDK:  {sdk_value}")
    assert not failures, "the official SDK signs differently:\n" + "\n".join(failures)
    missing = ACTIONS - actions
    assert not missing, f"actions never sent: {sorted(missing)}"
    assert with_token > 0, "no request carried a session token"
    assert encoded > 0, "no request needed percent-encoding"
    print(f"\n{len(requests)} client requests verified by the official SDK's signer, "
          f"{len(actions)} actions, {with_token} with a session token")


def test_session_token_is_the_one_configured(requests):
    tokens = {v for rec in requests for n, v in _headers(rec) if n == "x-security-token"}
    assert tokens == {WIRE_TOKEN}
