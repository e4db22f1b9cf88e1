"""Setup: what to register in Microsoft Entra for a connection, as steps or as a script.

The same code serves `relay365 init`, `relay365 entra-script` and the web setup page.
"""

from ._entra import EntraPlan, EntraStep, azure_cli_script, entra_plan, needed_permissions

__all__ = ["EntraPlan", "EntraStep", "azure_cli_script", "entra_plan", "needed_permissions"]
