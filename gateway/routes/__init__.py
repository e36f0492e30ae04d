"""Thin HTTP handlers: bind a route to a service call, nothing more."""
