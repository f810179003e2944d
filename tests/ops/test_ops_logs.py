"""Logging: JSON lines, context binding, stdlib routing, and redaction of secrets."""

from __future__ import annotations

import io
import json
import logging
from typing import TYPE_CHECKING, Any

import pytest
import structlog

from daemon import logs
from daemon.secrets import REDACTED

if TYPE_CHECKING:
    from tests.ops.conftest import CapturedLog

# The value registered in the captured_log fixture's secret store.
SECRET = "s3cr3t-Value-0f-the-tests"


def _lines(captured: CapturedLog) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captured.text.splitlines() if line.strip()]


def _assert_clean(captured: CapturedLog) -> None:
    assert captured.secret == SECRET
    assert SECRET not in captured.text
    assert REDACTED in captured.text


def test_json_line_has_the_documented_keys(captured_log: CapturedLog) -> None:
    logs.get_logger("provisiond.test").info("cycle finished", changes=3)
    (line,) = _lines(captured_log)
    assert line["event"] == "cycle finished"
    assert line["level"] == "info"
    assert line["logger"] == "provisiond.test"
    assert line["changes"] == 3
    assert line["timestamp"].endswith("Z")
    assert "T" in line["timestamp"]


def test_contextvars_are_merged(captured_log: CapturedLog) -> None:
    structlog.contextvars.bind_contextvars(cycle="c-42")
    with structlog.contextvars.bound_contextvars(target="alexishr", object="u-1"):
        logs.get_logger("t").info("delivered")
    logs.get_logger("t").info("after")
    first, second = _lines(captured_log)
    assert first["cycle"] == "c-42"
    assert (first["target"], first["object"]) == ("alexishr", "u-1")
    assert second["cycle"] == "c-42"
    assert "target" not in second


def test_level_filters_and_reconfigure_changes_it(captured_log: CapturedLog) -> None:
    log = logs.get_logger("t")
    log.debug("seen at debug")
    logs.configure(
        level="warning", fmt="json", secrets=captured_log.secrets, stream=captured_log.stream
    )
    log.info("hidden at warning")
    log.warning("seen at warning")
    events = [line["event"] for line in _lines(captured_log)]
    # Reconfiguring replaced the handler instead of adding a second one.
    assert events == ["seen at debug", "seen at warning"]


def test_secret_in_message_is_redacted(captured_log: CapturedLog) -> None:
    logs.get_logger("t").info(f"token is {SECRET}")
    logs.get_logger("t").info("token is %s", SECRET)
    _assert_clean(captured_log)


def test_secret_in_kwarg_value_is_redacted(captured_log: CapturedLog) -> None:
    logs.get_logger("t").info("request", header=f"Bearer {SECRET}")
    (line,) = _lines(captured_log)
    assert line["header"] == f"Bearer {REDACTED}"
    _assert_clean(captured_log)


def test_secret_in_nested_structure_is_redacted(captured_log: CapturedLog) -> None:
    logs.get_logger("t").info(
        "config",
        settings={"scim": {"token": SECRET, "urls": ["https://x", (SECRET, 1)]}},
        keyed={SECRET: "as a key"},
    )
    _assert_clean(captured_log)


def test_secret_in_object_repr_is_redacted(captured_log: CapturedLog) -> None:
    class Holder:
        def __str__(self) -> str:
            return f"Holder({SECRET})"

    logs.get_logger("t").info("object", holder=Holder(), raw=SECRET.encode())
    _assert_clean(captured_log)


def test_secret_in_exception_traceback_is_redacted(captured_log: CapturedLog) -> None:
    try:
        raise ValueError(f"server said: bad token {SECRET}")
    except ValueError as exc:
        logs.get_logger("t").exception("delivery failed", error=exc)
    (line,) = _lines(captured_log)
    assert "Traceback" in line["exception"]
    assert "ValueError" in line["exception"]
    assert line["error"] == f"server said: bad token {REDACTED}"
    _assert_clean(captured_log)


def test_stdlib_logging_is_routed_and_redacted(captured_log: CapturedLog) -> None:
    structlog.contextvars.bind_contextvars(cycle="c-7")
    logging.getLogger("aiohttp.server").warning("peer sent %s", SECRET)
    try:
        raise RuntimeError(SECRET)
    except RuntimeError:
        logging.getLogger("asyncio").exception("task failed")
    first, second = _lines(captured_log)
    assert first["logger"] == "aiohttp.server"
    assert first["level"] == "warning"
    assert first["event"] == f"peer sent {REDACTED}"
    assert first["cycle"] == "c-7"
    assert second["logger"] == "asyncio"
    assert "RuntimeError" in second["exception"]
    _assert_clean(captured_log)


def test_rendered_line_is_redacted_too(captured_log: CapturedLog) -> None:
    # This secret only appears once the console renderer joins key and value,
    # so no single value holds it: only the final line redaction can catch it.
    captured_log.secrets.register("apikey=abcdef12345")
    stream = io.StringIO()
    logs.configure(level="info", fmt="console", secrets=captured_log.secrets, stream=stream)
    logs.get_logger("t").info("configured", apikey="abcdef12345")
    assert "abcdef12345" not in stream.getvalue()
    assert REDACTED in stream.getvalue()


def test_console_format_is_readable_and_redacted(captured_log: CapturedLog) -> None:
    stream = io.StringIO()
    logs.configure(level="info", fmt="console", secrets=captured_log.secrets, stream=stream)
    try:
        raise ValueError(SECRET)
    except ValueError:
        logs.get_logger("provisiond.test").exception("boom", token=SECRET)
    text = stream.getvalue()
    assert "boom" in text
    assert "[provisiond.test]" in text
    assert "Traceback" in text
    assert SECRET not in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal


def test_auto_format_picks_json_for_a_non_terminal(captured_log: CapturedLog) -> None:
    stream = io.StringIO()
    logs.configure(level="info", fmt="auto", secrets=captured_log.secrets, stream=stream)
    logs.get_logger("t").info("hello")
    assert json.loads(stream.getvalue())["event"] == "hello"


@pytest.mark.parametrize(("level", "fmt"), [("verbose", "json"), ("info", "xml")])
def test_bad_settings_are_refused(level: str, fmt: str) -> None:
    with pytest.raises(ValueError, match="is not one of"):
        logs.configure(level=level, fmt=fmt, stream=io.StringIO())
