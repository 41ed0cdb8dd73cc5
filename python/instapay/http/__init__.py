"""The HTTP front of the engine (aiohttp on uvloop): see `app.create_app`."""

from instapay.http import server
from instapay.http.app import ServerSettings, create_app

__all__ = ["ServerSettings", "create_app", "server"]
