"""Admission: may this principal call this model now?

Rate limits, concurrency caps and quotas (issue: admission control) plug in here; today it
decides entitlement.
"""

from __future__ import annotations

from gateway import errors
from tenants.services import ModelGrant, Principal


def admit_model(principal: Principal, model: str) -> ModelGrant:
    """The tenant's grant for ``model``; unpublished and unentitled models look the same (404)."""
    grant = principal.models.get(model)
    if grant is None:
        raise errors.ModelNotFound(f"model {model!r} not found")
    return grant
