"""The XLA flags the core adds: appended to the operator's own, never duplicated, opt-out."""

from __future__ import annotations

from core.xla_flags import CPU_FLAGS, apply_defaults


def test_defaults_are_added_to_the_operators_flags_once():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    apply_defaults(environ)
    apply_defaults(environ)
    assert environ["XLA_FLAGS"].split() == ["--xla_force_host_platform_device_count=4",
                                            *CPU_FLAGS]


def test_an_operator_setting_wins_and_the_defaults_can_be_turned_off():
    name = CPU_FLAGS[0].split("=")[0]
    environ = {"XLA_FLAGS": f"{name}=none"}
    assert apply_defaults(environ) == f"{name}=none"
    environ = {"TANDEM_XLA_DEFAULTS": "0"}
    apply_defaults(environ)
    assert "XLA_FLAGS" not in environ
