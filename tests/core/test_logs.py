"""The log's lines: one JSON object each by default, with the context keys of their own; plain
text for a terminal with MAILSENDER_LOG_FORMAT=text; configured once, caplog left working."""
from __future__ import annotations

import io
import json
import logging

import pytest

from webapp.core.config import from_environment
from webapp.core.logs import configure_logging, context_logger


@pytest.fixture
def configured(monkeypatch, tmp_path):
    """configure_logging as a serving process does, from the environment, into a buffer; the
    root logger's handlers and level are put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    made = []

    def configure(**environment) -> io.StringIO:
        for name in ("MAILSENDER_LOG_FORMAT", "MAILSENDER_LOG_LEVEL"):
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        stream = io.StringIO()
        made.append(configure_logging(from_environment(str(tmp_path)), stream))
        return stream

    yield configure
    for handler in made:
        root.removeHandler(handler)
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_is_the_default_and_every_line_is_one_object_with_its_context_keys(configured):
    stream = configured()
    log = context_logger("mailsender.test", node="node-a", sender="1/0")
    log.info("message sent", extra={"message_id": 42, "partition": 1})
    logging.getLogger("mailsender.test").warning("no context here")
    lines = [json.loads(line) for line in _lines(stream)]
    assert len(lines) == 2
    sent, plain = lines
    assert {"message": "message sent", "level": "INFO", "logger": "mailsender.test", "message_id": 42,
            "partition": 1, "node": "node-a", "sender": "1/0"}.items() <= sent.items()
    assert sent["time"].endswith("+00:00")
    assert plain["message"] == "no context here" and plain["level"] == "WARNING"
    assert not {"message_id", "partition", "node", "sender"} & plain.keys()


def test_a_traceback_stays_inside_its_one_json_line(configured):
    stream = configured()
    try:
        raise RuntimeError("broken\nacross lines")
    except RuntimeError:
        logging.getLogger("mailsender.test").exception("it failed", extra={"message_id": 3})
    [line] = _lines(stream)
    record = json.loads(line)
    assert record["message_id"] == 3 and "RuntimeError: broken" in record["exc_info"]


def test_text_format_gives_readable_lines_with_the_keys_after_the_message(configured):
    stream = configured(MAILSENDER_LOG_FORMAT="text")
    context_logger("mailsender.test", node="node-a").info("message deferred",
                                                          extra={"message_id": 7, "code": 451})
    [line] = _lines(stream)
    assert " INFO mailsender.test: message deferred " in line
    assert line.endswith("node=node-a message_id=7 code=451")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_the_level_is_configured_and_info_is_the_default(configured):
    stream = configured()
    logging.getLogger("mailsender.test").debug("not shown")
    logging.getLogger("mailsender.test").info("shown")
    assert [json.loads(line)["message"] for line in _lines(stream)] == ["shown"]
    debug = configured(MAILSENDER_LOG_LEVEL="debug")
    logging.getLogger("mailsender.test").debug("now shown")
    assert [json.loads(line)["message"] for line in _lines(debug)] == ["now shown"]
    assert len(_lines(stream)) == 1, "configuring again replaces the handler it made, it adds none"


def test_a_format_or_level_not_known_is_refused_naming_the_variable(configured):
    with pytest.raises(ValueError, match="MAILSENDER_LOG_FORMAT"):
        configured(MAILSENDER_LOG_FORMAT="xml")
    with pytest.raises(ValueError, match="MAILSENDER_LOG_LEVEL"):
        configured(MAILSENDER_LOG_LEVEL="loud")


def test_creating_the_app_configures_no_logging_so_caplog_sees_every_line(app, caplog):
    caplog.set_level(logging.INFO, logger="mailsender")
    assert not [h for h in logging.getLogger().handlers if getattr(h, "_mailsender", False)]
    context_logger("mailsender.test", partition=1).info("seen")
    [record] = [r for r in caplog.records if r.name == "mailsender.test"]
    assert record.partition == 1


def test_batched_lines_wait_for_the_flush_and_a_warning_goes_out_at_once(configured, tmp_path, monkeypatch):
    for name in ("MAILSENDER_LOG_FORMAT", "MAILSENDER_LOG_LEVEL"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "batched.log"
    stream = open(path, "w", buffering=1 << 16, encoding="utf-8")
    handler = configure_logging(from_environment(str(tmp_path)), stream, batched=True)
    try:
        log = logging.getLogger("mailsender.test")
        log.info("first", extra={"message_id": 1})
        log.info("second", extra={"message_id": 2})
        assert path.read_text() == ""
        handler.flush()
        assert [json.loads(line)["message_id"] for line in path.read_text().splitlines()] == [1, 2]
        log.info("third")
        log.warning("at once")
        assert [json.loads(line)["message"] for line in path.read_text().splitlines()][2:] == ["third", "at once"]
    finally:
        logging.getLogger().removeHandler(handler)
        stream.close()
