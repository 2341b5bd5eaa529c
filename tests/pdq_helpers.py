"""Test peers for the patient lookup: an ITI-21 supplier on python-hl7's MLLP server and a PDQm (FHIR)
endpoint on aiohttp's web server, both on 127.0.0.1 with ephemeral ports.

:class:`PdqSupplier` is :class:`tests.fake_ehr.Hl7Ehr` (python-hl7's server, optional TLS, all the fake
EHR's failure modes) whose positive and negative answers are ``RSP^K22`` built by the project's
:class:`~vitals_agent.hl7.pdq.PdqDirectory` from the patients given.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fake_ehr import Hl7Ehr, msh10
from vitals_agent.hl7.pdq import Authority, PdqCandidate, PdqDirectory

AUTHORITY = "EXCLINIC&2.999.1&ISO"
ODALYS = PdqCandidate(
    mrn="ZQ4471902",
    authority=Authority.parse(AUTHORITY),
    identifier_type="MR",
    family="QUIRKE",
    given="ODALYS",
    birth_date="19610923",
    sex="F",
    encounter="V778",
)
PATIENTS_CSV = "mrn,name,dob,sex,visit\nZQ4471902,QUIRKE^ODALYS,1961-09-23,F,V778\n"


class PdqSupplier(Hl7Ehr):
    """An ITI-21 supplier: ``AA`` answers from the directory, ``AE``/``AR`` error answers; other fake EHR
    modes (SILENT, CLOSE, GARBLE, WRONG_ID ...) as usual. ``page_size``: it answers in increments of at
    most that many (ITI-21 incremental response, DSC continuation)."""

    def __init__(
        self,
        patients: Iterable[PdqCandidate] = (ODALYS,),
        mode: str = "AA",
        *,
        page_size: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(mode, **kw)
        self.directory = PdqDirectory(
            list(patients), authority=Authority.parse(AUTHORITY), page_size=page_size
        )

    def _ack(self, raw: bytes, control_id: str, code: str, *, text: str = "", err: str = "") -> bytes:
        answer = self.directory.answer(
            raw, control_id="RSP" + control_id[-10:], now=datetime.now(UTC), ack_code=code
        )
        if control_id != msh10(raw):  # WRONG_ID: answer another query
            answer = answer.replace(f"MSA|{code}|{msh10(raw)}", f"MSA|{code}|{control_id}")
        return answer.encode("utf-8")


def patient_resource(p: PdqCandidate, system: str = "urn:oid:2.999.1", **extra: Any) -> dict[str, Any]:
    birth = f"{p.birth_date[:4]}-{p.birth_date[4:6]}-{p.birth_date[6:]}" if p.birth_date else None
    gender = {"F": "female", "M": "male", "O": "other", "U": "unknown"}.get(p.sex or "")
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": f"pat-{p.mrn}",
        "active": True,
        "identifier": [
            {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "000-00-0000"},
            {
                "system": system,
                "value": p.mrn,
                "type": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
                },
            },
        ],
        "name": [{"use": "official", "family": p.family, "given": [p.given]}],
    }
    if gender:
        resource["gender"] = gender
    if birth:
        resource["birthDate"] = birth
    resource.update(extra)
    return resource


@dataclass
class FhirEndpoint:
    """A loopback FHIR server answering ``GET /fhir/Patient?identifier=system|value``."""

    patients: list[dict[str, Any]]
    token: str | None = None
    status: int = 200
    body: bytes | None = None  # a fixed answer instead of the search result
    silent: bool = False  # accept the request, never answer
    ssl_context: ssl.SSLContext | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/fhir"

    async def _search(self, request: web.Request) -> web.StreamResponse:
        import asyncio

        self.requests.append(
            {
                "query": dict(request.query),
                "authorization": request.headers.get("Authorization"),
                "accept": request.headers.get("Accept"),
                "peercert": request.transport.get_extra_info("peercert") if request.transport else None,
            }
        )
        if self.silent:
            await asyncio.Event().wait()
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(
                {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]},
                status=401,
            )
        if self.body is not None or self.status != 200:
            return web.Response(
                body=self.body or b"{}", status=self.status, content_type="application/fhir+json"
            )
        system, _, value = request.query.get("identifier", "").partition("|")
        found = [
            p
            for p in self.patients
            if any(i.get("system") == system and i.get("value") == value for i in p.get("identifier", []))
        ]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {"fullUrl": f"{self.base_url}/Patient/{p['id']}", "resource": p, "search": {"mode": "match"}}
                for p in found
            ],
        }
        return web.Response(body=json.dumps(bundle).encode(), content_type="application/fhir+json")

    async def __aenter__(self) -> FhirEndpoint:
        app = web.Application()
        app.router.add_get("/fhir/Patient", self._search)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
