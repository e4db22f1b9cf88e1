"""m365sim: an emulator of the Microsoft 365 endpoints a mail sender talks to.

The identity platform (authorize, token, device code, discovery), Microsoft Graph
(sendMail, drafts, upload sessions, applications) and Exchange Online SMTP submission
(STARTTLS, XOAUTH2), over real HTTPS with a CA of its own, driven by a scenario file.

    with m365sim.Simulator("seed") as sim:
        ...  # point MSAL at sim.authority(), httpx at sim.graph_url, trust sim.ca_file
        sim.mailbox("someone@example.org").messages
"""

from ._mailstore import DeliveredMessage
from ._scenario import (
    App,
    Certificate,
    Fault,
    Limits,
    Scenario,
    ScenarioError,
    Secret,
    SharedMailbox,
    Tenant,
    User,
    load_scenario,
    shipped_scenarios,
)
from ._server import Mailbox, Simulator
from ._state import RequestRecord

__all__ = [
    "App",
    "Certificate",
    "DeliveredMessage",
    "Fault",
    "Limits",
    "Mailbox",
    "RequestRecord",
    "Scenario",
    "ScenarioError",
    "Secret",
    "SharedMailbox",
    "Simulator",
    "Tenant",
    "User",
    "load_scenario",
    "shipped_scenarios",
]
