"""Shared by the signer checks: runs the official SDK's signer at a fixed time, with its debug
logger replaced (to read or to silence what `SignerV4.sign` logs)."""

import datetime
import types

from volcenginesdkcore import signv4


def pin_sdk(monkeypatch, x_date, logger):
    """The SDK reads `datetime.datetime.utcnow()` and logs through `sdk_core_logger`."""
    fixed = datetime.datetime.strptime(x_date, "%Y%m%dT%H%M%SZ")

    class Frozen(datetime.datetime):
        @classmethod
        def utcnow(cls):
            return fixed

    monkeypatch.setattr(signv4, "datetime", types.SimpleNamespace(datetime=Frozen))
    monkeypatch.setattr(signv4, "sdk_core_logger", logger)
