"""The admin web page: setup, status, test email, log and alerts, on the HTTP listener.

Server-rendered (Starlette + Jinja2, autoescaped), every asset served from the package.
``AdminSite`` lives as long as the process (sessions, sign-ins in progress, the login rate
limit); ``admin_routes`` builds the pages over one running configuration.
"""

from ._routes import admin_routes
from ._site import Admin, AdminSite

__all__ = ["Admin", "AdminSite", "admin_routes"]
