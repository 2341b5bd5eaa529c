"""PDQm (IHE ITI-78, FHIR R4): the search request and reading the answer into PDQ candidates. Pure.

The consumer asks ``GET [base]/Patient?identifier=<system>|<mrn>&_count=<n>`` and gets a ``searchset``
Bundle; the Bundle is validated with ``fhir.resources`` (R4B models, which read R4 Patient resources).
Each active Patient with an identifier in the searched system is one :class:`~vitals_agent.hl7.pdq.
PdqCandidate`: ``identifier.value`` -> MRN, the system -> assigning authority (``urn:oid:X`` -> ``&X&ISO``,
or the configured authority when the OIDs agree), ``name`` (``official`` first) -> family and first given
name, ``birthDate`` (full dates only) -> ``YYYYMMDD``, ``gender`` -> table 0001. A Bundle ``next`` link
means the server has more than it sent.
"""

from __future__ import annotations

import datetime as dt
from urllib.parse import urlencode

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

from vitals_agent.hl7.pdq import Authority, PdqCandidate, PdqProtocolError, PdqResult

GENDERS = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
MEDIA_TYPE = "application/fhir+json"


def search_url(base_url: str, system: str, mrn: str, count: int) -> str:
    """The PDQm search for one identifier (``|`` and other reserved characters percent-encoded)."""
    query = urlencode({"identifier": f"{system}|{mrn.strip()}", "_count": str(count)})
    return f"{base_url.rstrip('/')}/Patient?{query}"


def _authority(system: str, configured: Authority | None) -> Authority:
    oid = system.removeprefix("urn:oid:") if system.startswith("urn:oid:") else None
    if configured is not None and oid and configured.universal_id == oid:
        return configured
    if oid:
        return Authority("", oid, "ISO")
    if configured is not None:
        return configured
    return Authority("", system, "URI")


def _candidate(patient: Patient, system: str, configured: Authority | None) -> PdqCandidate | None:
    ident = next((i for i in patient.identifier or [] if i.system == system and i.value), None)
    if ident is None or ident.value is None:
        return None
    id_type = None
    if ident.type is not None:
        id_type = next((c.code for c in ident.type.coding or [] if c.code), None)
    names = patient.name or []
    name = next((n for n in names if n.use == "official"), names[0] if names else None)
    family = name.family if name is not None else None
    given = (name.given or [None])[0] if name is not None else None
    birth = patient.birthDate
    birth_date = birth.strftime("%Y%m%d") if isinstance(birth, dt.date) else None
    return PdqCandidate(
        mrn=ident.value.strip(),
        authority=_authority(system, configured),
        identifier_type=id_type,
        family=(family or "").strip() or None,
        given=(given or "").strip() or None,
        birth_date=birth_date,
        sex=GENDERS.get(patient.gender or ""),
    )


def parse_bundle(body: bytes | str, system: str, authority: Authority | None = None) -> PdqResult:
    """Read a PDQm search answer. Raises :class:`PdqProtocolError` when it is not a FHIR R4 Bundle."""
    try:
        bundle = Bundle.model_validate_json(body)
    except (ValidationError, ValueError) as exc:
        first = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        raise PdqProtocolError(f"the PDQm answer is not a FHIR Bundle ({first[:80]})") from None
    if bundle.type != "searchset":
        raise PdqProtocolError("the PDQm answer is not a search result (Bundle.type is not searchset)")
    candidates: list[PdqCandidate] = []
    outside = 0
    for entry in bundle.entry or []:
        resource = entry.resource
        if not isinstance(resource, Patient):
            continue  # an OperationOutcome with search.mode "outcome", included resources
        if resource.active is False:
            outside += 1  # an inactive (e.g. merged) record is never a patient to bind
            continue
        found = _candidate(resource, system, authority)
        if found is None:
            outside += 1
        else:
            candidates.append(found)
    more = any(link.relation == "next" for link in bundle.link or [])
    return PdqResult(
        status="OK" if candidates else "NF", candidates=tuple(candidates), more=more, outside_domain=outside
    )
