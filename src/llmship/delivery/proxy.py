"""Which HTTP proxy a request to an intake goes through, as the Datadog Agent and HTTP clients decide it.

- ``HTTPS_PROXY`` for https URLs, ``HTTP_PROXY`` for http ones (upper case first, then lower case, as Go's
  ``httpproxy.FromEnvironment`` reads them for the Agent);
- a sink's own ``proxy`` setting (``[sinks.datadog] proxy``; an OTLP sink would pass its own) replaces both;
- ``NO_PROXY`` (hosts, domain suffixes, ``*``) sends matching hosts direct, whichever proxy applies.

Credentials in a proxy URL (``http://user:password@proxy:3128``) are taken out of it and sent only as
``Proxy-Authorization``: what is logged or shown is ``describe()``, which never holds them.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiohttp


@dataclass(frozen=True)
class Proxy:
    url: str  # scheme://host:port, without credentials
    authorization: str | None = None  # the Proxy-Authorization value, when the URL carried credentials

    def __repr__(self) -> str:  # never the credentials, even in a traceback
        return f"Proxy({self.describe()})"

    def describe(self) -> str:
        return self.url + (" (with credentials)" if self.authorization else "")

    def request_options(self, target: str) -> tuple[dict[str, str], dict]:
        """(headers to add to the request, keyword arguments for aiohttp's request). The credentials go to
        the proxy only: on the CONNECT of an https target, or on the request an http proxy forwards."""
        if self.authorization is None:
            return {}, {"proxy": self.url}
        header = {"Proxy-Authorization": self.authorization}
        if target.startswith("https:"):
            return {}, {"proxy": self.url, "proxy_headers": header}
        return header, {"proxy": self.url}


def parse(raw: str) -> Proxy:
    """A proxy URL, its credentials split off; a bare "host:port" means http."""
    parts = urlsplit(raw if "://" in raw else "http://" + raw)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    url = f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
    auth = None
    if parts.username is not None:
        auth = aiohttp.encode_basic_auth(unquote(parts.username), unquote(parts.password or ""))
    return Proxy(url, auth)


def from_environment(scheme: str, env: Mapping[str, str] = os.environ) -> str:
    name = "HTTPS_PROXY" if scheme == "https" else "HTTP_PROXY"
    return env.get(name) or env.get(name.lower()) or ""


def bypassed(url: str, env: Mapping[str, str] = os.environ) -> bool:
    """True when NO_PROXY names the URL's host (or is "*")."""
    no_proxy = env.get("NO_PROXY") or env.get("no_proxy") or ""
    host = urlsplit(url).netloc.rpartition("@")[2]
    return bool(no_proxy) and bool(urllib.request.proxy_bypass_environment(host, {"no": no_proxy}))


def proxy_for(url: str, configured: str = "", env: Mapping[str, str] = os.environ) -> Proxy | None:
    """The proxy a request to ``url`` goes through, or None for a direct connection."""
    if bypassed(url, env):
        return None
    raw = configured or from_environment(urlsplit(url).scheme, env)
    return parse(raw) if raw else None


def secrets(configured: str = "", env: Mapping[str, str] = os.environ) -> list[str]:
    """The credentials of every proxy that may apply, for the log redactor (belt and braces)."""
    out = []
    for raw in (configured, from_environment("https", env), from_environment("http", env)):
        if raw and (proxy := parse(raw)).authorization is not None:
            userinfo = raw.split("://", 1)[-1].rpartition("@")[0]
            password = userinfo.partition(":")[2]
            out += [userinfo, password, unquote(password), proxy.authorization]  # as written, decoded, sent
    return out
