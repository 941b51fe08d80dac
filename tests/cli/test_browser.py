"""When `roz login` opens a browser: only a graphical one, only where one can appear."""

from __future__ import annotations

import webbrowser

import pytest

from roz_cli.browser import is_console_browser, should_open_browser


@pytest.mark.parametrize("platform", ["darwin", "win32"])
def test_desktops_always_have_a_browser(platform: str) -> None:
    assert should_open_browser({}, interactive=True, platform=platform)


@pytest.mark.parametrize("variable", ["DISPLAY", "WAYLAND_DISPLAY"])
def test_linux_needs_a_display(variable: str) -> None:
    assert should_open_browser({variable: ":0"}, interactive=True, platform="linux")
    assert not should_open_browser({}, interactive=True, platform="linux")
    assert not should_open_browser({variable: ""}, interactive=True, platform="linux")


@pytest.mark.parametrize("platform", ["darwin", "win32", "linux"])
def test_never_when_the_output_is_not_a_terminal(platform: str) -> None:
    assert not should_open_browser({"DISPLAY": ":0"}, interactive=False, platform=platform)


@pytest.mark.parametrize("name", ["lynx", "w3m", "links", "elinks", "www-browser"])
def test_console_browsers_are_refused(name: str) -> None:
    assert is_console_browser(webbrowser.GenericBrowser(name))
    assert is_console_browser(webbrowser.BackgroundBrowser(f"/usr/bin/{name}"))


def test_a_graphical_browser_is_used() -> None:
    assert not is_console_browser(webbrowser.BackgroundBrowser("firefox"))
    assert not is_console_browser(webbrowser.Chrome("google-chrome"))
