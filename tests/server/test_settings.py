"""Settings from the environment: the robot link's, and their checks."""

from __future__ import annotations

import pytest

from server.settings import Settings, SettingsError


def test_the_robot_links_terms_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "ROZ_ROBOT_HEARTBEAT_SECONDS": "2",
            "ROZ_ROBOT_PRESENCE_WINDOW_SECONDS": "6",
            "ROZ_ROBOT_KEEPALIVE_SECONDS": "3",
            "ROZ_ROBOT_PULSE_SECONDS": "1.5",
        }
    )
    assert settings.robot_heartbeat_seconds == 2
    assert settings.robot_presence_window_seconds == 6
    assert settings.robot_keepalive_seconds == 3
    assert settings.robot_pulse_seconds == 1.5
    defaults = Settings.from_env({})
    assert (defaults.robot_heartbeat_seconds, defaults.robot_presence_window_seconds) == (10, 30)


@pytest.mark.parametrize(
    "env",
    [
        {"ROZ_ROBOT_PRESENCE_WINDOW_SECONDS": "10"},  # not longer than the heartbeat
        {"ROZ_ROBOT_PRESENCE_WINDOW_SECONDS": "12", "ROZ_ROBOT_KEEPALIVE_SECONDS": "12"},
        {"ROZ_ROBOT_PULSE_SECONDS": "0"},
        {"ROZ_ROBOT_HEARTBEAT_SECONDS": "soon"},
    ],
)
def test_robot_terms_that_cannot_work_stop_the_server_with_the_variable_named(
    env: dict[str, str],
) -> None:
    with pytest.raises(SettingsError, match="ROZ_ROBOT_"):
        Settings.from_env(env)
