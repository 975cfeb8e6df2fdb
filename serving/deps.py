"""Dependencies the routes declare, so they read like prose: the loaded serving state,
the app's settings, and who may call what.

Access: ``POST /admin/*`` needs ``HOMEREC_SERVE_ADMIN_TOKEN`` (off, 404, when unset); the
dashboard and its API, which show listener data, need ``HOMEREC_DASHBOARD_TOKEN`` when it
is set, and are off (404) under ``HOMEREC_ENV=production`` when it is not. Tokens are
``Authorization: Bearer <token>`` headers compared in constant time.
"""

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from pydantic import SecretStr

from serving.ranking import HomeRanker
from training.core.settings import Settings


def loaded_ranker(request: Request) -> HomeRanker:
    """The serving state, or 503 while it loads (or failed to)."""
    ranker: HomeRanker | None = request.app.state.ranker
    if ranker is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail=f"not ready: {request.app.state.startup_error or 'loading'}",
        )
    return ranker


def app_settings(request: Request) -> Settings:
    return request.app.state.settings


LoadedRanker = Annotated[HomeRanker, Depends(loaded_ranker)]
AppSettings = Annotated[Settings, Depends(app_settings)]
Authorization = Annotated[str | None, Header(include_in_schema=False)]


def _configured(token: SecretStr | None) -> bytes | None:
    """The token's bytes, or None when it is unset or empty."""
    value = token.get_secret_value() if token is not None else ""
    return value.encode() or None


def check_bearer(expected: bytes, authorization: str | None) -> None:
    """401 unless ``authorization`` is ``Bearer <expected>`` (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            detail="a valid bearer token is required",
            headers={"WWW-Authenticate": "Bearer"},
        )


def admin_access(settings: AppSettings, authorization: Authorization = None) -> None:
    """404 when no admin token is configured (the endpoints are off); else the bearer check."""
    expected = _configured(settings.serve_admin_token)
    if expected is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="admin endpoints are disabled")
    check_bearer(expected, authorization)


def dashboard_enabled(settings: AppSettings) -> None:
    """404 in production when no dashboard token is configured: the dashboard is off."""
    if settings.env == "production" and _configured(settings.dashboard_token) is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            detail="the dashboard is off in production unless HOMEREC_DASHBOARD_TOKEN is set",
        )


def dashboard_access(settings: AppSettings, authorization: Authorization = None) -> None:
    """The dashboard's data: the bearer check when a dashboard token is configured
    (after :func:`dashboard_enabled`, which its router also declares)."""
    expected = _configured(settings.dashboard_token)
    if expected is not None:
        check_bearer(expected, authorization)


AdminAccess = Depends(admin_access)
DashboardEnabled = Depends(dashboard_enabled)
DashboardAccess = Depends(dashboard_access)
