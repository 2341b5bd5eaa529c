"""A small FHIR R4 server on 127.0.0.1 for tests: transactions, conditional creates, faults, OAuth.

It is written from the FHIR specification, not from the agent's builder:

* ``POST {base}`` takes a transaction Bundle, parsed with ``fhir.resources``' R4B models (a Bundle they
  reject gets a 400 with an OperationOutcome). Entries are processed all-or-nothing: ``POST`` with
  ``ifNoneExist`` (``identifier=system|value``) returns the existing resource when one matches (200) and
  creates one otherwise (201); ``PUT Type?identifier=...`` updates the match or creates; ``urn:uuid``
  references are rewritten to the assigned ``Type/id``; conditional references (``Patient?identifier=``)
  must match exactly one stored resource, else the whole transaction fails with 404 and an
  OperationOutcome. The answer is a ``transaction-response`` Bundle.
* Faults, per request: :attr:`plan` (consumed one entry per Bundle request), else :attr:`per_id` (the
  Bundle's ``identifier.value``, i.e. the agent's control id -> mode), else :attr:`mode`. Modes:
  ``OK``; ``503`` / ``429`` / ``500`` (with ``Retry-After`` :attr:`retry_after` when set); ``400`` (an
  OperationOutcome); ``404_HTML`` (not a FHIR answer); ``SLOW`` (answer after :attr:`delay` s);
  ``RESET`` (close the connection without answering); ``STORE_RESET`` / ``STORE_SLOW`` (process and
  store the Bundle, then drop the connection or answer too late: the client cannot know it arrived).
* Auth: with :attr:`token` set, requests need ``Authorization: Bearer <token>`` (else 401). With
  :attr:`smart_key` (a public key), ``POST {root}/token`` implements a SMART Backend Services token
  endpoint: it checks the client assertion's signature, ``iss``/``sub``, ``aud`` and ``exp`` with PyJWT and
  hands out :attr:`token` with ``expires_in`` :attr:`token_lifetime`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import ssl
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from aiohttp import web
from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError

from tests.kit.wait import until

MEDIA = "application/fhir+json"
_STATUS = {"create": "201 Created", "keep": "200 OK", "update": "200 OK"}


@dataclass
class Arrival:
    """One Bundle request as it arrived (whatever was then done with it)."""

    bundle: dict[str, Any] | None
    raw: bytes
    headers: dict[str, str]
    mode: str
    status: int | None = None  # what the server answered (None: no answer)


@dataclass
class Store:
    resources: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # type -> id -> resource
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def all(self, kind: str) -> list[dict[str, Any]]:
        return list(self.resources.get(kind, {}).values())

    def search(self, kind: str, query: str) -> list[tuple[str, dict[str, Any]]]:
        params = parse_qs(query, keep_blank_values=True)
        tokens = params.get("identifier", [])
        if not tokens or set(params) != {"identifier"}:
            raise ValueError(f"unsupported search {kind}?{query}")
        system, _, value = tokens[0].partition("|")
        value = value.replace("\\|", "|")
        return [
            (rid, res)
            for rid, res in self.resources.get(kind, {}).items()
            if any(i.get("system") == system and i.get("value") == value for i in res.get("identifier", []))
        ]


class FhirError(Exception):
    def __init__(self, status: int, text: str) -> None:
        self.status = status
        self.text = text
        super().__init__(text)


def outcome(text: str, code: str = "processing") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": code, "diagnostics": text}],
    }


class FakeFhir:
    def __init__(
        self,
        *,
        mode: str = "OK",
        ssl_context: ssl.SSLContext | None = None,
        token: str | None = None,
        smart_key: Any = None,
        client_id: str = "vitals-agent",
        port: int = 0,
    ) -> None:
        self.mode = mode
        self.plan: list[str] = []
        self.per_id: dict[str, str] = {}
        self.retry_after: str | None = None
        self.delay = 5.0
        self.ssl_context = ssl_context
        self.token = token
        self.smart_key = smart_key
        self.client_id = client_id
        self.token_lifetime = 300
        self.tokens_issued = 0
        self.token_requests: list[dict[str, Any]] = []
        self.store = Store()
        self.arrivals: list[Arrival] = []
        self.committed = 0  # transactions processed and stored
        self.host = "127.0.0.1"
        self.port = port
        self._runner: web.AppRunner | None = None

    # --- lifecycle ----------------------------------------------------------------------------------

    @property
    def root(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/fhir"

    async def start(self) -> FakeFhir:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/fhir", self._transaction)
        app.router.add_post("/token", self._token_endpoint)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeFhir:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- what tests look at ---------------------------------------------------------------------------

    def observations(self) -> list[dict[str, Any]]:
        return self.store.all("Observation")

    def bundle_ids(self, status: int | None = 200) -> list[str]:
        """The identifier (control id) of each Bundle that got ``status`` (None: any), in arrival order."""
        return [
            str(a.bundle["identifier"]["value"])
            for a in self.arrivals
            if a.bundle is not None and (status is None or a.status == status)
        ]

    def observation_identifiers(self) -> list[str]:
        return [o["identifier"][0]["value"] for o in self.observations()]

    def add_patient(self, system: str, value: str) -> str:
        rid = str(next(self.store.ids))
        patient = {"resourceType": "Patient", "id": rid, "identifier": [{"system": system, "value": value}]}
        self.store.resources.setdefault("Patient", {})[rid] = patient
        return rid

    async def wait_for(self, committed: int, timeout: float = 20.0) -> None:
        """Wait until ``committed`` transactions have been stored."""
        await until(lambda: self.committed >= committed, timeout, f"{committed} stored transaction(s)")

    async def wait_arrivals(self, count: int, timeout: float = 20.0) -> None:
        await until(lambda: len(self.arrivals) >= count, timeout, f"{count} request(s)")

    # --- the token endpoint -------------------------------------------------------------------------

    async def _token_endpoint(self, request: web.Request) -> web.Response:
        import jwt

        form = await request.post()
        self.token_requests.append(dict(form))
        if self.smart_key is None or self.token is None:
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        ):
            return web.json_response({"error": "invalid_request"}, status=400)
        try:
            claims = jwt.decode(
                str(form.get("client_assertion", "")),
                self.smart_key,
                algorithms=["RS384", "ES384"],
                audience=f"{self.root}/token",
                options={"require": ["exp", "iss", "sub", "jti"]},
            )
        except jwt.PyJWTError as exc:
            return web.json_response({"error": "invalid_client", "error_description": str(exc)}, status=401)
        if (
            claims["iss"] != self.client_id
            or claims["sub"] != self.client_id
            or claims["exp"] > time.time() + 300
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": self.token, "token_type": "bearer", "expires_in": self.token_lifetime}
        )

    # --- transactions -------------------------------------------------------------------------------

    async def _transaction(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        ident = doc.get("identifier", {}).get("value") if isinstance(doc, dict) else None
        mode = self.plan.pop(0) if self.plan else self.per_id.get(str(ident), self.mode)
        arrival = Arrival(doc if isinstance(doc, dict) else None, raw, dict(request.headers), mode)
        self.arrivals.append(arrival)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._answer(arrival, 401, outcome("missing or wrong bearer token", "login"))
        if mode in ("503", "429", "500"):
            headers = {"Retry-After": self.retry_after} if self.retry_after else {}
            return self._answer(arrival, int(mode), outcome(f"test server says {mode}", "transient"), headers)
        if mode == "400":
            return self._answer(
                arrival, 400, outcome("Observation.code: not acceptable here (test)", "invalid")
            )
        if mode == "404_HTML":
            arrival.status = 404
            return web.Response(status=404, text="<html>no such page</html>", content_type="text/html")
        if mode == "RESET":
            return await self._drop(request)
        if mode == "SLOW":
            await asyncio.sleep(self.delay)  # a slow server (simulation)
        try:
            answer = self._process(arrival.bundle, raw)
        except FhirError as exc:
            return self._answer(arrival, exc.status, outcome(exc.text))
        if mode == "STORE_RESET":
            return await self._drop(request)
        if mode == "STORE_SLOW":
            await asyncio.sleep(self.delay)  # a server slow to answer after storing (simulation)
        return self._answer(arrival, 200, answer)

    def _answer(
        self, arrival: Arrival, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> web.Response:
        arrival.status = status
        return web.Response(status=status, text=json.dumps(body), content_type=MEDIA, headers=headers)

    async def _drop(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is not None:
            transport.abort()
        raise asyncio.CancelledError  # no answer: the connection is gone

    def _process(self, doc: dict[str, Any] | None, raw: bytes) -> dict[str, Any]:
        try:
            Bundle.model_validate_json(raw)
        except ValidationError as exc:
            raise FhirError(400, f"not a valid R4 Bundle: {exc.errors()[0]['msg']}") from None
        assert doc is not None
        if doc.get("type") != "transaction":
            raise FhirError(400, "only transaction Bundles are accepted here")
        scratch = {kind: dict(items) for kind, items in self.store.resources.items()}
        store = Store(scratch, self.store.ids)
        resolved: dict[str, str] = {}
        plans: list[tuple[str, str, dict[str, Any], str]] = []  # (action, kind, resource, id)
        for entry in doc.get("entry", []):
            resource = json.loads(json.dumps(entry["resource"]))
            kind = resource["resourceType"]
            req = entry["request"]
            if req["method"] == "POST":
                if req.get("url") != kind:
                    raise FhirError(400, f"POST to {req.get('url')} with a {kind}")
                matches = store.search(kind, unquote(req["ifNoneExist"])) if req.get("ifNoneExist") else []
                if len(matches) > 1:
                    raise FhirError(412, f"ifNoneExist matched {len(matches)} {kind} resources")
                if matches:
                    rid, existing = matches[0]
                    plans.append(("keep", kind, existing, rid))
                else:
                    rid = str(next(store.ids))
                    plans.append(("create", kind, resource, rid))
            elif req["method"] == "PUT":
                url_kind, _, query = req["url"].partition("?")
                if url_kind != kind or not query:
                    raise FhirError(400, f"unsupported PUT {req['url']}")
                matches = store.search(kind, unquote(query))
                if len(matches) > 1:
                    raise FhirError(412, f"conditional update matched {len(matches)} resources")
                rid = matches[0][0] if matches else str(next(store.ids))
                plans.append(("update" if matches else "create", kind, resource, rid))
            else:
                raise FhirError(400, f"unsupported method {req['method']}")
            if entry.get("fullUrl"):
                resolved[entry["fullUrl"]] = f"{kind}/{rid}"
        for action, kind, resource, rid in plans:
            if action != "keep":
                self._resolve(resource, resolved, store)
                resource["id"] = rid
                store.resources.setdefault(kind, {})[rid] = resource
        self.store.resources = store.resources
        self.committed += 1
        return {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [
                {"response": {"status": _STATUS[action], "location": f"{kind}/{rid}"}}
                for action, kind, _, rid in plans
            ],
        }

    def _resolve(self, node: Any, resolved: dict[str, str], store: Store) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str):
                if ref.startswith("urn:uuid:"):
                    if ref not in resolved:
                        raise FhirError(400, f"reference {ref} is not in the Bundle")
                    node["reference"] = resolved[ref]
                elif "?" in ref:
                    kind, _, query = ref.partition("?")
                    matches = store.search(kind, unquote(query))
                    if len(matches) != 1:
                        raise FhirError(
                            404, f"conditional reference {kind}?... matched {len(matches)} resources"
                        )
                    node["reference"] = f"{kind}/{matches[0][0]}"
            for value in node.values():
                self._resolve(value, resolved, store)
        elif isinstance(node, list):
            for item in node:
                self._resolve(item, resolved, store)


@contextlib.asynccontextmanager
async def running(**kw: Any) -> Any:
    server = FakeFhir(**kw)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
