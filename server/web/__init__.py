"""The browser pages roz serves beside its API: today, the device-login approval page."""

from server.web.device_page import DevicePage

__all__ = ["DevicePage"]
