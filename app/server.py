"""Launching the web app offline and safely: loopback by default, a password required anywhere else.

Binding to a non-loopback host needs `auth` unless `insecure` is set, and there adding or removing
experts stays off unless `allow_edits` is set; `read_only` turns it off anywhere.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from app.config import AppConfig

__all__ = ["ServeError", "ServeOptions", "launch", "parse_auth", "serve"]

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
log = logging.getLogger("expertgate")


class ServeError(ValueError):
    """The server would be unsafe or cannot start with these options."""


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 7860
    auth: tuple[str, str] | None = None  # (user, password) asked by the login page and gradio_client
    insecure: bool = False  # allow a non-loopback bind without auth
    read_only: bool = False  # refuse adding and removing experts
    allow_edits: bool = False  # allow adding and removing experts on a non-loopback bind
    max_batch: int = 16  # rows per generate call
    max_waiting: int = 64  # questions allowed to wait for a batch before "busy, try again"

    def editable(self) -> bool:
        """Whether the Experts tab may change the experts folder."""
        if self.read_only:
            return False
        return self.host in LOOPBACK or self.allow_edits

    def check(self) -> None:
        if self.host not in LOOPBACK and self.auth is None and not self.insecure:
            raise ServeError(f"binding to {self.host} exposes the app to the network: give --auth USER:PASS "
                             "(or --insecure to serve without a password)")
        if not 1 <= self.port <= 65535:
            raise ServeError(f"port must be from 1 to 65535, got {self.port}")


def parse_auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise ServeError("--auth must look like USER:PASS, both parts non-empty")
    return user, password


def _offline_environment() -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if any(os.environ.get(v) for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")):
        for name in ("NO_PROXY", "no_proxy"):
            os.environ[name] = ",".join(filter(None, [os.environ.get(name), "127.0.0.1,localhost"]))


def launch(config: AppConfig, options: ServeOptions, *, block: bool = True):
    """Loads the service, builds the page and serves it; returns (blocks, url) when `block` is False."""
    options.check()
    _offline_environment()
    from app.service import ExpertGate
    from app.ui import CSS, THEME, build_ui, default_batcher

    service = ExpertGate(config)
    for warning in service.warnings:
        log.warning(warning)
    batcher = default_batcher(service, max_batch=options.max_batch, max_waiting=options.max_waiting)
    demo = build_ui(service, config, batcher=batcher, read_only=not options.editable())
    _, url, _ = demo.launch(server_name=options.host, server_port=options.port, share=False, ssr_mode=False,
                            auth=options.auth, theme=THEME, css=CSS, max_threads=2 * (options.max_waiting + 2 * options.max_batch) + 40,
                            prevent_thread_lock=not block, quiet=not block)
    return demo, url


def serve(config: AppConfig, host: str = "127.0.0.1", port: int = 7860, **options) -> None:
    """Serves until interrupted; `options` are the other ServeOptions fields."""
    launch(config, ServeOptions(host=host, port=port, **options))
