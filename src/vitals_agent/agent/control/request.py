"""One HTTP request as the control server read it, and the error that answers it with a status: what
:mod:`.routes` and :mod:`.review_routes` both read (the server builds the request)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import parse_qs, urlsplit


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class Request:
    """One HTTP request as the server read it. Header names are lower-case (the last value wins)."""

    method: str
    target: str
    headers: Mapping[str, str]
    body: bytes = b""
    identify: Callable[[], Mapping[str, Any]] | None = None  # the server's lookup of the calling OS user

    @cached_property
    def caller(self) -> Mapping[str, Any]:
        """Who the operating system says is calling (e.g. ``{"uid": 1000, "user": "nurse1"}``), or {}."""
        return dict(self.identify()) if self.identify is not None else {}

    @cached_property
    def path(self) -> str:
        return urlsplit(self.target).path or "/"

    @cached_property
    def query(self) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.target).query).items()}

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise HttpError(400, "body is not valid JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "body must be a JSON object")
        return data

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None
