"""Configuration files of the reference servers, rendered into the run's temporary directory.

- ``upstream``: nginx, one worker process, answering ``/small`` (100 bytes, ``return 200``) and
  serving ``/large`` (1 MiB) and ``/huge`` (the streaming download, a sparse file) from disk;
  keep-alive on with no per-connection request limit.
- ``nginx_proxy``: nginx ``proxy_pass`` to the upstream with an upstream keep-alive pool,
  buffering in memory only (``proxy_max_temp_file_size 0``: no temp files, as a streaming proxy).
- ``caddyfile``: Caddy ``reverse_proxy`` to the upstream, admin API and automatic HTTPS off;
  with ``access_log``, one JSON line per request on stdout (Caddy's ``log`` directive), as the
  dispatcher writes at its default log level.

Everything listens on 127.0.0.1 only; nginx runs in the foreground (``daemon off``) with its
prefix, pid file, logs and temp paths inside the run's directory.
"""

from __future__ import annotations

import os
from pathlib import Path
from string import Template

__all__ = [
    "LARGE_SIZE",
    "SMALL_BODY",
    "caddyfile",
    "nginx_proxy",
    "nginx_upstream",
    "write_static_files",
]

#: The 100-byte body of ``/small`` (printable, so it can sit in an nginx ``return``).
SMALL_BODY = b"x" * 99 + b"\n"
LARGE_SIZE = 1024 * 1024

_NGINX_COMMON = Template(
    """\
worker_processes 1;
daemon off;
master_process on;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
$user
events {
    worker_connections 4096;
}
http {
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path $prefix/temp/body;
    proxy_temp_path $prefix/temp/proxy;
    fastcgi_temp_path $prefix/temp/fastcgi;
    uwsgi_temp_path $prefix/temp/uwsgi;
    scgi_temp_path $prefix/temp/scgi;
$http
}
"""
)

_UPSTREAM_SERVER = Template(
    """\
    server {
        listen 127.0.0.1:$port;
        root $www;
        location = /small {
            return 200 "$small";
        }
        location / {
        }
    }
"""
)

_PROXY_SERVER = Template(
    """\
    upstream origin {
        server 127.0.0.1:$upstream_port;
        keepalive 64;
        keepalive_requests 1000000;
        keepalive_timeout 75s;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
        }
    }
"""
)

_CADDYFILE = Template(
    """\
{
	admin off
	auto_https off
}

http://:$port {
	bind 127.0.0.1
$log	reverse_proxy 127.0.0.1:$upstream_port
}
"""
)

_CADDY_ACCESS_LOG = """\
	log {
		output stdout
		format json
	}
"""


def _nginx(prefix: Path, http: str) -> str:
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "temp" / name).mkdir(parents=True, exist_ok=True)
    # As root, nginx would hand its workers to "nobody", who cannot read the temp directory.
    user = "user root;" if os.geteuid() == 0 else ""
    return _NGINX_COMMON.substitute(prefix=prefix, user=user, http=http)


def write_static_files(www: Path, huge_bytes: int) -> None:
    """``/large`` (1 MiB) and ``/huge`` (``huge_bytes``, sparse: no disk space is used)."""
    www.mkdir(parents=True, exist_ok=True)
    (www / "large").write_bytes(b"y" * LARGE_SIZE)
    with (www / "huge").open("wb") as huge:
        huge.truncate(huge_bytes)


def nginx_upstream(prefix: Path, port: int, www: Path) -> Path:
    """Write the upstream's nginx.conf into ``prefix``; return its path."""
    server = _UPSTREAM_SERVER.substitute(
        port=port, www=www, small=SMALL_BODY.decode("ascii").replace("\n", "\\n")
    )
    path = prefix / "nginx.conf"
    path.write_text(_nginx(prefix, server))
    return path


def nginx_proxy(prefix: Path, port: int, upstream_port: int) -> Path:
    """Write the nginx reverse proxy's nginx.conf into ``prefix``; return its path."""
    server = _PROXY_SERVER.substitute(port=port, upstream_port=upstream_port)
    path = prefix / "nginx.conf"
    path.write_text(_nginx(prefix, server))
    return path


def caddyfile(directory: Path, port: int, upstream_port: int, *, access_log: bool) -> Path:
    """Write the Caddyfile of the Caddy reverse proxy; return its path."""
    path = directory / "Caddyfile"
    log = _CADDY_ACCESS_LOG if access_log else ""
    path.write_text(_CADDYFILE.substitute(port=port, upstream_port=upstream_port, log=log))
    return path
