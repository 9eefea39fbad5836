"""fence_virt.conf keys of the day-2 operations: admin_socket, metrics_*, log_format."""

from __future__ import annotations

import pytest

from guestfence.errors import ConfigError
from guestfence.host.config import parse_config
from guestfence.host.main import build_parser, with_options


def conf(extra: str) -> str:
    return (f'fence_virtd {{ listener = "tcp"; backend = "libvirt"; {extra} }}\n'
            'backends { libvirt { uri = "test:///default"; } }\n')


def test_defaults_admin_socket_on_metrics_off_text_logs() -> None:
    config = parse_config(conf(""))
    assert (config.admin_socket, config.metrics_port, config.metrics_address,
            config.log_format) == (None, None, "127.0.0.1", "text")
    assert config.warnings == ()


def test_the_keys_are_read_from_the_fence_virtd_block() -> None:
    config = parse_config(conf('admin_socket = "/run/gf/a.sock"; metrics_port = "9229"; '
                               'metrics_address = "::1"; log_format = "JSON";'))
    assert (config.admin_socket, config.metrics_port, config.metrics_address,
            config.log_format) == ("/run/gf/a.sock", 9229, "::1", "json")
    assert parse_config(conf('admin_socket = "off";')).admin_socket == "off"


@pytest.mark.parametrize(("extra", "needle"), [
    ('admin_socket = "admin.sock";', "expected an absolute path or 'off'"),
    ('metrics_port = "0";', "expected an integer 1..65535"),
    ('metrics_port = "http";', "expected an integer 1..65535"),
    ('metrics_address = "localhost";', "expected an IPv4 or IPv6 address"),
    ('log_format = "xml";', "expected one of text, json"),
])
def test_bad_values_name_file_line_and_expectation(extra: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=r"^f\.conf:1: ") as info:
        parse_config(conf(extra), "f.conf")
    assert needle in str(info.value)


def test_command_line_options_override_the_config() -> None:
    config = parse_config(conf('metrics_port = "9229"; log_format = "json";'))
    args = build_parser().parse_args(["--metrics-port", "9300", "--admin-socket", "off",
                                      "--metrics-address", "0.0.0.0"])
    changed = with_options(config, args)
    assert (changed.metrics_port, changed.admin_socket, changed.metrics_address,
            changed.log_format) == (9300, "off", "0.0.0.0", "json")
    assert with_options(config, build_parser().parse_args([])) is config


@pytest.mark.parametrize("argv", [["--metrics-port", "70000"], ["--admin-socket", "rel.sock"],
                                  ["--metrics-address", "example.org"],
                                  ["--log-format", "xml"]])
def test_bad_options_are_refused_by_the_parser(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(argv)
    assert info.value.code == 2
