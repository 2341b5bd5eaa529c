"""An independent check of the FHIR output: what any Bundle the agent sends must satisfy.

* it parses with ``fhir.resources``' R4B models (the library's own validation);
* it is a transaction whose entries are all idempotent (conditional create with ``ifNoneExist``, or a
  conditional update), with unique ``urn:uuid`` fullUrls and every ``urn:uuid`` reference resolving;
* every Observation with a code from the FHIR R4 core Vital Signs value set meets the profile's required
  elements: status, category ``vital-signs``, the LOINC code, a subject (Patient) or, when unbound, a
  device, an ``effectiveDateTime`` with a time-zone offset, and a UCUM ``valueQuantity`` in a unit the
  profile allows, or components that have one (or a ``dataAbsentReason``). The blood-pressure panel has
  systolic and diastolic components.

The rules are written out here from the R4 profiles, not taken from the builder's tables, so a wrong table
row fails the check.
"""

from __future__ import annotations

import json
import re
from typing import Any

from fhir.resources.R4B.bundle import Bundle

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
# R4 Vital Signs profiles: LOINC code -> UCUM units the profile allows (None: a panel, no value of its own)
VITAL_SIGN_UNITS: dict[str, frozenset[str] | None] = {
    "85354-9": None,  # blood pressure panel
    "8867-4": frozenset({"/min"}),  # heart rate
    "2708-6": frozenset({"%"}),  # oxygen saturation
    "8310-5": frozenset({"Cel", "[degF]"}),  # body temperature
    "29463-7": frozenset({"kg", "g", "[lb_av]"}),  # body weight
    "8302-2": frozenset({"cm", "[in_i]"}),  # body height
    "39156-5": frozenset({"kg/m2"}),  # BMI
    "9279-1": frozenset({"/min"}),  # respiratory rate
}
BP_COMPONENTS = {"8480-6": frozenset({"mm[Hg]"}), "8462-4": frozenset({"mm[Hg]"})}
_OFFSET_DATETIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


class FhirOracleError(AssertionError):
    pass


def _loinc_codes(concept: dict[str, Any]) -> set[str]:
    return {c["code"] for c in concept.get("coding", []) if c.get("system") == LOINC}


def _check_quantity(quantity: dict[str, Any], units: frozenset[str] | None, where: str) -> None:
    if quantity.get("system") != UCUM or not quantity.get("code") or "value" not in quantity:
        raise FhirOracleError(f"{where}: valueQuantity needs value, UCUM system and code: {quantity}")
    if units is not None and quantity["code"] not in units:
        raise FhirOracleError(f"{where}: unit {quantity['code']!r} not allowed (allowed: {sorted(units)})")


def check_observation(obs: dict[str, Any], where: str = "Observation") -> None:
    """The Vital Signs profile's required elements for one Observation (when its code is a vital sign)."""
    if obs.get("status") not in (
        "registered",
        "preliminary",
        "final",
        "amended",
        "corrected",
        "entered-in-error",
    ):
        raise FhirOracleError(f"{where}: bad status {obs.get('status')!r}")
    codes = _loinc_codes(obs.get("code", {}))
    vital = [c for c in codes if c in VITAL_SIGN_UNITS]
    if not vital:
        if not codes and not obs.get("code", {}).get("coding"):
            raise FhirOracleError(f"{where}: no code")
        return
    categories = {
        (c.get("system"), c.get("code")) for cat in obs.get("category", []) for c in cat.get("coding", [])
    }
    if (CATEGORY, "vital-signs") not in categories:
        raise FhirOracleError(f"{where}: vital sign {vital} without category vital-signs")
    subject = obs.get("subject")
    if subject is None and "device" not in obs:
        raise FhirOracleError(f"{where}: neither subject nor device")
    if subject is not None and not str(subject.get("reference", "")).startswith(("Patient", "urn:uuid:")):
        raise FhirOracleError(f"{where}: subject is not a Patient reference: {subject}")
    effective = obs.get("effectiveDateTime")
    if not isinstance(effective, str) or not _OFFSET_DATETIME.match(effective):
        raise FhirOracleError(f"{where}: effectiveDateTime missing or without offset: {effective!r}")
    code = vital[0]
    units = VITAL_SIGN_UNITS[code]
    if code == "85354-9":
        components = obs.get("component") or []
        seen: set[str] = set()
        for comp in components:
            comp_codes = _loinc_codes(comp["code"])
            seen |= comp_codes
            if "valueQuantity" in comp:
                _check_quantity(comp["valueQuantity"], BP_COMPONENTS.get(next(iter(comp_codes), "")), where)
            elif "dataAbsentReason" not in comp:
                raise FhirOracleError(f"{where}: component {comp_codes} has neither value nor absent reason")
        missing = set(BP_COMPONENTS) - seen
        if missing:
            raise FhirOracleError(f"{where}: blood pressure panel lacks components {sorted(missing)}")
        if "valueQuantity" in obs:
            raise FhirOracleError(f"{where}: the blood pressure panel has a value of its own")
        return
    if "valueQuantity" in obs:
        _check_quantity(obs["valueQuantity"], units, where)
    elif "dataAbsentReason" not in obs:
        raise FhirOracleError(f"{where}: neither valueQuantity nor dataAbsentReason")


def check_bundle(body: bytes | str) -> dict[str, Any]:
    """Everything above for a whole transaction Bundle; returns it as a dict (values as JSON numbers)."""
    Bundle.model_validate_json(body)  # R4B models: types, cardinalities, choice types
    doc: dict[str, Any] = json.loads(body)
    if doc.get("resourceType") != "Bundle" or doc.get("type") != "transaction":
        raise FhirOracleError("not a transaction Bundle")
    entries = doc.get("entry") or []
    if not entries:
        raise FhirOracleError("empty Bundle")
    full_urls = [e.get("fullUrl") for e in entries]
    if len(set(full_urls)) != len(full_urls) or not all(str(u).startswith("urn:uuid:") for u in full_urls):
        raise FhirOracleError(f"fullUrls must be unique urn:uuid values: {full_urls}")
    for index, entry in enumerate(entries):
        request = entry.get("request") or {}
        resource = entry["resource"]
        kind = resource["resourceType"]
        if request.get("method") == "POST":
            if request.get("url") != kind or not request.get("ifNoneExist"):
                raise FhirOracleError(f"entry {index}: POST {kind} without ifNoneExist: not idempotent")
        elif request.get("method") == "PUT":
            if not str(request.get("url", "")).startswith(f"{kind}?"):
                raise FhirOracleError(f"entry {index}: PUT must be a conditional update: {request}")
        else:
            raise FhirOracleError(f"entry {index}: unexpected request {request}")
        if kind == "Observation":
            check_observation(resource, f"entry {index} Observation")
    text = body if isinstance(body, str) else body.decode("utf-8")
    for ref in re.findall(r'"reference":"(urn:uuid:[^"]+)"', text.replace(" ", "")):
        if ref not in full_urls:
            raise FhirOracleError(f"reference {ref} does not resolve inside the Bundle")
    return doc


def resources(doc: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in doc["entry"] if e["resource"]["resourceType"] == kind]


def observation_by_loinc(doc: dict[str, Any], code: str) -> dict[str, Any]:
    found = [o for o in resources(doc, "Observation") if code in _loinc_codes(o["code"])]
    if len(found) != 1:
        raise FhirOracleError(f"expected one Observation coded {code}, found {len(found)}")
    return found[0]
