"""Tenant admin web console (``/console``): server-rendered pages over the same services as the
API. ``console_router`` is the one entry the app factory registers; ``template_config`` is its
Jinja configuration."""

from __future__ import annotations

from gateway.console.controllers import console_router, template_config

__all__ = ["console_router", "template_config"]
