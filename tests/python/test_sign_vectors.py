"""Regenerates every committed signing vector with the official Python SDK's own signer.

tests/data/sign_vectors.json pins our Rust signer (tests/signer_vectors.rs) and, through it,
the emulator's verification. Here the official SDK (volcenginesdk-core,
`volcenginesdkcore.signv4.SignerV4.sign`, the function its sign-request interceptor calls)
computes each vector from its inputs, and every committed output must come out byte for byte:
canonical request, string to sign, signing key, signed headers, signature, the headers the
SDK sets (X-Date, X-Content-Sha256, X-Security-Token, Authorization, Content-Type) and the URL.
Nothing is hashed or HMAC'd here: the SDK computes it all. Its clock is pinned to the
vector's X-Date (the SDK reads `datetime.datetime.utcnow()`), and its debug logger is
replaced by a recorder to read the canonical request and string to sign it logs.

SIGN_VECTORS=path checks another copy of the file (used to show an edited vector fails).
Needs: pip install volcenginesdk-core pytest.
"""

import json
import os
from urllib.parse import urlencode

import pytest
from volcenginesdkcore.signv4 import SignerV4

from sdk_pin import pin_sdk

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VECTORS = os.environ.get("SIGN_VECTORS", os.path.join(REPO, "tests", "data", "sign_vectors.json"))
MIN_VECTORS = 6

with open(VECTORS, encoding="utf-8") as f:
    DOC = json.load(f)


class _Recorder:
    """Stands in for the SDK's debug logger: keeps what `SignerV4.sign` logs."""

    def __init__(self):
        self.lines = []

    def debug_sign(self, msg, *args, **kwargs):
        self.lines.append(msg % args if args else msg)

    def logged(self, prefix):
        found = [line[len(prefix):] for line in self.lines if line.startswith(prefix)]
        assert len(found) == 1, f"the SDK logged {prefix!r} {len(found)} times: {self.lines}"
        return found[0]


def sdk_sign(monkeypatch, inputs, headers):
    """Runs the SDK's signer on a vector's inputs; returns (headers it set, its log)."""
    rec = _Recorder()
    pin_sdk(monkeypatch, inputs["x_date"], rec)
    SignerV4.sign(
        inputs["path"], inputs["method"], headers, inputs["body"], None,
        [tuple(p) for p in inputs["query_params"]],
        inputs["access_key_id"], inputs["secret_access_key"],
        inputs["region"], inputs["service"], inputs["session_token"])
    return headers, rec


def test_vector_file_is_complete():
    ids = [v["id"] for v in DOC["vectors"]]
    assert len(ids) >= MIN_VECTORS, f"expected at least {MIN_VECTORS} vectors, got {ids}"
    assert len(set(ids)) == len(ids), f"duplicate ids: {ids}"


@pytest.mark.parametrize("vector", DOC["vectors"], ids=[v["id"] for v in DOC["vectors"]])
def test_sdk_reproduces_vector(monkeypatch, vector):
    i = vector["inputs"]
    headers, rec = sdk_sign(monkeypatch, i, dict(i["caller_headers"]))

    assert rec.logged("canonical_request:\n") == vector["canonical_request"], "canonical request"
    assert rec.logged("string_to_sign:\n") == vector["string_to_sign"], "string to sign"
    date = i["x_date"][:8]
    key = SignerV4.get_signing_secret_key_v4(i["secret_access_key"], date, i["region"], i["service"])
    assert key.hex() == vector["signing_key_hex"], "signing key"
    assert rec.logged("calculated signature: ") == vector["signature"], "signature"
    auth = headers["Authorization"]
    assert auth.split("SignedHeaders=")[1].split(",")[0] == vector["signed_headers"], "signed headers"
    assert auth.endswith(", Signature=" + vector["signature"]), "signature in Authorization"

    # Every header the vector says goes on the wire, and no other: the SDK's exact set.
    assert headers == vector["output_headers"], "headers after signing"

    # The URL as the SDK's REST layer builds it (rest.py: url + '?' + urlencode(query)).
    url = f"https://{i['host']}{i['path']}?{urlencode([tuple(p) for p in i['query_params']])}"
    assert url == vector["url"], "url"


@pytest.mark.parametrize("vector", [v for v in DOC["vectors"] if v["inputs"]["method"] != "GET"],
                         ids=lambda v: v["id"])
def test_sdk_default_content_type(monkeypatch, vector):
    """A non-GET without Content-Type: the SDK adds its default and signs it. Where a vector's
    caller Content-Type is that default, leaving it out changes nothing."""
    i = vector["inputs"]
    given = {k: v for k, v in i["caller_headers"].items() if k != "Content-Type"}
    headers, _ = sdk_sign(monkeypatch, i, given)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded; charset=utf-8"
    same = headers["Authorization"] == vector["output_headers"]["Authorization"]
    assert same == (i["caller_headers"].get("Content-Type") == headers["Content-Type"]), vector["id"]
