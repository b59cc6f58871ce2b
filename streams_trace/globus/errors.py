"""Globus failures as one line that says what to do, with a documented exit code.

``GlobusAuthError`` (exit 4): not logged in, login expired, consent missing,
no permission. ``GlobusTunnelError`` (exit 5): tunnel unknown, stopped,
expired or not ready. ``globus_errors(...)`` wraps every call into globus-sdk
and translates its exceptions; it imports globus_sdk only when one escapes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ExitCode, NetworkError, StreamsTraceError

if TYPE_CHECKING:
    import globus_sdk

TUNNEL_CREATE_HINT = "create one with 'globus streams tunnel create'"


class GlobusAuthError(StreamsTraceError):
    """Globus login, consent or permission is needed."""

    exit_code = ExitCode.GLOBUS_AUTH


class GlobusTunnelError(StreamsTraceError):
    """The tunnel is unknown, stopped, expired or not ready."""

    exit_code = ExitCode.GLOBUS_TUNNEL


@dataclass(frozen=True)
class Subject:
    """What a Globus call was about, so its error can name it."""

    what: str  # "read tunnel T", "ask the GCS Manager of endpoint E for a LAN secret"
    tunnel_id: str | None = None
    endpoint_id: str | None = None


def login_command(endpoint_id: str | None = None) -> str:
    return "streams-trace login" + (f" --endpoint {endpoint_id}" if endpoint_id else "")


def translate(error: BaseException, subject: Subject) -> StreamsTraceError | None:
    """The StreamsTraceError for a globus-sdk exception, or None if it is not one."""
    import globus_sdk
    from globus_sdk.gare import to_gare
    from globus_sdk.login_flows import CommandLineLoginFlowEOFError
    from globus_sdk.token_storage import TokenValidationError

    if isinstance(error, globus_sdk.GlobusAPIError):
        return _translate_api_error(error, subject, to_gare(error) is not None)
    if isinstance(error, CommandLineLoginFlowEOFError):
        return GlobusAuthError(
            "no authorization code was entered (stdin is closed); run "
            f"'{login_command(subject.endpoint_id)}' in a terminal"
        )
    if isinstance(error, TokenValidationError):
        return GlobusAuthError(
            f"cannot {subject.what}: not logged in to Globus with the access it needs "
            f"({_first_line(error)}); run '{login_command(subject.endpoint_id)}'"
        )
    if isinstance(error, globus_sdk.NetworkError):
        return NetworkError(f"cannot {subject.what}: Globus is unreachable ({_first_line(error)})")
    if isinstance(error, globus_sdk.GlobusSDKUsageError):
        return GlobusAuthError(f"cannot {subject.what}: {_first_line(error)}")
    return None


def _translate_api_error(
    error: globus_sdk.GlobusAPIError,
    subject: Subject,
    is_consent_error: bool,
) -> StreamsTraceError:
    status = error.http_status
    # Whatever Globus said, on one line: the error must stay one line.
    detail = " ".join(str(error.message or error.code or error.http_reason).split())
    if is_consent_error or (status == 403 and error.code == "ConsentRequired"):
        where = f" for endpoint {subject.endpoint_id}" if subject.endpoint_id else ""
        return GlobusAuthError(
            f"cannot {subject.what}: Globus needs your consent{where}; "
            f"run '{login_command(subject.endpoint_id)}' and accept"
        )
    if status == 401:
        return GlobusAuthError(
            f"cannot {subject.what}: Globus did not accept your login ({detail}); "
            f"run '{login_command(subject.endpoint_id)}'"
        )
    if status == 403:
        if subject.endpoint_id:
            return GlobusAuthError(
                f"cannot {subject.what}: you have no permission on endpoint "
                f"{subject.endpoint_id} ({detail}); ask its administrators for access "
                f"to its stream access point"
            )
        return GlobusAuthError(
            f"cannot {subject.what}: permission denied ({detail}); use the Globus "
            f"identity that created the tunnel or was granted access to it"
        )
    if status == 404 and subject.tunnel_id and not subject.endpoint_id:
        return GlobusTunnelError(
            f"Globus knows no tunnel {subject.tunnel_id}; check the ID with "
            f"'globus streams tunnel list', or {TUNNEL_CREATE_HINT}"
        )
    return GlobusTunnelError(f"cannot {subject.what}: Globus answered {status} {detail}")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return " ".join(text.splitlines()[0].split()) if text else type(error).__name__


@contextlib.contextmanager
def globus_errors(subject: Subject) -> Iterator[None]:
    """Turn globus-sdk exceptions raised inside into this project's errors."""
    try:
        yield
    except StreamsTraceError:
        raise
    except Exception as exc:
        translated = translate(exc, subject)
        if translated is None:
            raise
        raise translated from exc
