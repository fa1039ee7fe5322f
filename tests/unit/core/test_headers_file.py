"""headers_file / --header-file / ${env:...} in --header, and the file exporter's modes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from gotel.exporterhelper.clientconfig import ClientConfig, parse_header_args, read_headers_file
from gotel.exporters.file import Config as FileConfig


def test_headers_file_adds_secret_headers(tmp_path: Path) -> None:
    f = tmp_path / "h.yaml"
    f.write_text("Authorization: Bearer abc\nx-tenant: 42\n")
    f.chmod(0o600)
    cfg = ClientConfig.model_validate({"endpoint": "x:1", "headers": {"x-other": "1"}, "headers_file": str(f)})
    assert cfg.header_values() == {"x-other": "1", "authorization": "Bearer abc", "x-tenant": "42"}
    assert "Bearer abc" not in repr(cfg)
    again = ClientConfig.model_validate(cfg.model_dump())  # a validated config validates again
    assert again.header_values() == cfg.header_values()


def test_headers_file_errors_name_the_file_never_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"headers file /nonexistent/h\.yaml: No such file"):
        ClientConfig.model_validate({"endpoint": "x:1", "headers_file": "/nonexistent/h.yaml"})
    f = tmp_path / "h.yaml"
    f.write_text("- Bearer s3cr3t\n")
    with pytest.raises(ValidationError) as ei:
        ClientConfig.model_validate({"endpoint": "x:1", "headers_file": str(f)})
    assert "not a YAML mapping" in str(ei.value) and "s3cr3t" not in str(ei.value)
    f.write_text("authorization: Bearer b\n")
    with pytest.raises(ValidationError, match="header authorization is set both in headers and in headers_file"):
        ClientConfig.model_validate({"endpoint": "x:1", "headers": {"Authorization": "Bearer a"},
                                     "headers_file": str(f)})


def test_world_readable_headers_file_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "h.yaml"
    f.write_text("authorization: Bearer x\n")
    f.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert read_headers_file(str(f)) == {"authorization": "Bearer x"}
    assert "is readable by other users (mode 0644): chmod 600 it" in caplog.text


def test_header_args_expand_env_and_warn_on_literal_credentials() -> None:
    h, errors, warnings = parse_header_args(
        ["authorization=Bearer ${env:TOK}", "x-trace=on", "x-api-key=literal"], {"TOK": "t0k"})
    assert h == {"authorization": "Bearer t0k", "x-trace": "on", "x-api-key": "literal"}
    assert errors == []
    assert len(warnings) == 1 and warnings[0].startswith("--header 'x-api-key' holds a literal value")
    _h, errors, _w = parse_header_args(["authorization=Bearer ${env:MISSING}", "novalue"], {})
    assert errors == ["--header authorization: environment variable MISSING is not set "
                      "(use ${env:MISSING:-default} for a default)", "--header 'novalue': expected KEY=VALUE"]


def test_file_modes() -> None:
    c = FileConfig.model_validate({"path": "x"})
    assert (c.file_mode, c.directory_mode) == (0o600, 0o700)
    for v in (0o640, "0640", "640", "0o640"):
        assert FileConfig.model_validate({"path": "x", "file_mode": v}).file_mode == 0o640
    for bad in ("0999", "rw-r--r--", 0o1777, True):
        with pytest.raises(ValidationError):
            FileConfig.model_validate({"path": "x", "file_mode": bad})
