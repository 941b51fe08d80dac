"""Opening the approval page in a browser, and only where a graphical one can appear.

A console browser (lynx, w3m, …) would take over the very terminal that shows the code, and on
Linux without a display there is nothing to open; in both cases the printed URL is enough.
"""

from __future__ import annotations

import os
import sys
import webbrowser
from collections.abc import Mapping

CONSOLE_BROWSERS = frozenset({"www-browser", "links", "links2", "elinks", "lynx", "w3m"})


def should_open_browser(
    env: Mapping[str, str], *, interactive: bool, platform: str = sys.platform
) -> bool:
    """macOS and Windows always have a desktop; elsewhere only X11 or Wayland sessions do."""
    if not interactive:
        return False
    if platform == "darwin" or platform.startswith("win"):
        return True
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def is_console_browser(browser: webbrowser.BaseBrowser) -> bool:
    # GenericBrowser runs its command in the foreground: the console browsers, and any
    # $BROWSER command Python does not recognise (which might be one).
    if type(browser) is webbrowser.GenericBrowser:
        return True
    return os.path.basename(browser.name) in CONSOLE_BROWSERS


def open_in_browser(url: str) -> bool:
    """Opens `url` in a graphical browser; False (and nothing opened) when there is none."""
    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        return False
    if is_console_browser(browser):
        return False
    try:
        return browser.open(url, new=2)
    except (webbrowser.Error, OSError):
        return False
