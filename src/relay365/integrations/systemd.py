"""The systemd unit ``relay365 install-service`` writes: relay365 as a hardened system service.

The service runs as a dedicated system user (not root, not a DynamicUser: ``relay365 login``
and the ``sendmail`` command must reach the same store as that user), in a read-only view of
the system (``ProtectSystem=strict``) where only its state directory (``StateDirectory``,
/var/lib/relay365: the store, the key) is writable, with no way to gain privileges, only the
address families it uses, and the system calls of an ordinary service.  SIGHUP
(``systemctl reload``) re-reads the configuration; a crash restarts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_UNIT_PATH = Path("/etc/systemd/system/relay365.service")
DEFAULT_CONFIG = Path("/etc/relay365/relay365.toml")
DEFAULT_USER = "relay365"
STATE_DIR = Path("/var/lib/relay365")


@dataclass(frozen=True)
class ServiceOptions:
    """What the unit depends on: the program, the configuration, the user."""

    executable: Path
    config: Path = DEFAULT_CONFIG
    user: str = DEFAULT_USER
    grace: float = 30.0  # seconds deliveries in flight get at stop (relay365 serve --grace)
    privileged_ports: bool = False  # an SMTP listener on 25, 465 or 587


def unit_text(options: ServiceOptions) -> str:
    """The text of relay365.service for ``options``."""
    in_home = any(options.executable.is_relative_to(p) or options.config.is_relative_to(p)
                  for p in (Path("/home"), Path("/root")))
    capabilities = "CAP_NET_BIND_SERVICE" if options.privileged_ports else ""
    return f"""\
# relay365.service: written by `relay365 install-service`.
# Enable with: systemctl daemon-reload && systemctl enable --now relay365
[Unit]
Description=relay365 mail relay: applications' mail through Microsoft 365 with OAuth 2.0
Wants=network-online.target
After=network-online.target

[Service]
Type=exec
User={options.user}
Group={options.user}
ExecStart={options.executable} serve --config {options.config} --log-format json --grace {options.grace:g}
# SIGHUP: re-read the configuration; listeners restart, the queue is kept.
ExecReload=/bin/kill -HUP $MAINPID
Environment=RELAY365_CONFIG={options.config}
Restart=on-failure
RestartSec=5s
TimeoutStopSec={options.grace + 15:g}s
# /var/lib/relay365: the store (SQLite) and the key encrypting tokens; nothing else is writable.
StateDirectory=relay365
StateDirectoryMode=0750
UMask=0027

# Hardening: what a mail relay does not need, it does not get.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={"read-only" if in_home else "yes"}
PrivateTmp=yes
PrivateDevices=yes
DevicePolicy=closed
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RemoveIPC=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
CapabilityBoundingSet={capabilities}
AmbientCapabilities={capabilities}
# Not MemoryDenyWriteExecute: cffi (cryptography, argon2) may need executable trampolines.

[Install]
WantedBy=multi-user.target
"""


def next_steps(options: ServiceOptions, unit: Path) -> list[str]:
    """The commands that take the written unit to a running service, in order."""
    user, config = options.user, options.config
    return [
        f"useradd --system --home-dir {STATE_DIR} --no-create-home --shell /usr/sbin/nologin {user}",
        f"install -d -o {user} -g {user} -m 0750 {STATE_DIR}",
        f"relay365 init --config {config}    # if not done yet",
        f"add state_dir = \"{STATE_DIR}\" at the top of {config} (before the first [table])",
        f"chown root:{user} {config} && chmod 0640 {config}",
        f"sudo -u {user} {options.executable} login --config {config} --device",
        "systemctl daemon-reload",
        f"systemctl enable --now {unit.stem}",
        f"systemctl status {unit.stem}; journalctl -u {unit.stem} -f",
    ]


def state_dir_warning(config: Path) -> str | None:
    """Why the service would not find its store, if ``config`` exists and says so."""
    from ..config import load_settings
    from ..errors import ConfigError

    if not config.exists():
        return None
    try:
        settings = load_settings(config, env={})
    except (ConfigError, OSError):
        return None
    if settings.store is None and settings.state_dir != STATE_DIR:
        return (f"{config} keeps its store in {settings.state_dir}, where the service may not write: "
                f"set state_dir = \"{STATE_DIR}\" (the unit's StateDirectory)")
    return None
