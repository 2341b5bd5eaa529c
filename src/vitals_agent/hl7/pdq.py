"""IHE Patient Demographics Query (ITI-21) over HL7 v2.5: the query, the answer, and a small supplier.

Pure: no I/O, no clock (the caller passes ``control_id``, ``query_tag`` and ``created_at``).

* :func:`build_qbp` writes ``QBP^Q22^QBP_Q21`` (ITI TF-2a 3.21.4.1): ``QPD-1`` ``IHE PDQ Query``,
  ``QPD-2`` a query tag, ``QPD-3`` ``@PID.3.1^<MRN>`` plus ``@PID.3.4.1`` / ``.2`` / ``.3`` repetitions for
  the configured assigning authority, ``RCP-1`` ``I`` (immediate) and ``RCP-2`` ``<limit>^RD``; a request
  for the next increment of an answer (ITI-21 incremental response) repeats the QPD with its query tag and
  adds ``DSC-1``, the continuation pointer the previous answer's ``DSC-1`` gave (:func:`next_increment`).
* :func:`parse_rsp` reads ``RSP^K22^RSP_K21`` (3.21.4.2): ``MSA-2`` must equal the query's ``MSH-10``
  and ``QAK-1`` its query tag; ``MSA-1`` ``AE``/``AR`` (or ``QAK-2`` ``AE``/``AR``) is a refusal; each
  ``PID`` (with a following ``PV1``, as ITI-22 suppliers send) is one :class:`PdqCandidate`. PID-3 is
  taken from the repetition in the configured domain (the answer's own assigning authority is kept).
* :class:`PdqDirectory` answers a QBP^Q22 from a list of patients (``vitals-agent receive --pdq``).

Error messages never carry the MRN, names or dates: suppliers echo them in ``MSA-3`` and ``ERR-8``, so only
the codes are reported.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime

from vitals_agent.errors import VitalsAgentError
from vitals_agent.hl7.escape import ENCODING_CHARACTERS, escape, escape_structured, unescape
from vitals_agent.hl7.oru import format_dtm

QUERY_NAME = "IHE PDQ Query"  # QPD-1
QBP_TYPE = "QBP^Q22^QBP_Q21"  # MSH-9 of the query
RSP_TYPE = "RSP^K22^RSP_K21"  # MSH-9 of the answer
PDQ_VERSION = "2.5"  # MSH-12: ITI-21 is defined on HL7 v2.5
DEFAULT_LIMIT = 10  # RCP-2: a room needs one patient; more than a handful is a query that went wrong
MAX_LIMIT = 100
SEXES = frozenset({"F", "M", "O", "U", "A", "N"})  # HL7 table 0001

_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_CONTROL_ID = re.compile(r"^[A-Za-z0-9._-]{1,20}$")
_QIP = re.compile(r"^@(PID\.\d+(?:\.\d+){0,2})$")


class PdqError(VitalsAgentError):
    """Base of patient-query errors. ``str(exc)`` is one line without patient data."""


class PdqProtocolError(PdqError):
    """The supplier's answer is not a usable RSP^K22 for this query (malformed, wrong MSA-2 or QAK-1)."""


class PdqRefusedError(PdqError):
    """The supplier answered ``AE``/``AR``. ``code`` is MSA-1 (or QAK-2), ``errors`` the ERR-3 codes."""

    def __init__(self, code: str, errors: Sequence[str] = ()) -> None:
        self.code = code
        self.errors = tuple(errors)
        detail = f" [{', '.join(self.errors)}]" if self.errors else ""
        verb = "rejected" if code.endswith("R") else "could not answer"
        super().__init__(f"the EHR {verb} the patient query ({code}{detail})")


# ------------------------------------------------------------------------------------------ values


@dataclass(frozen=True)
class Authority:
    """An assigning authority (HD): namespace id, universal id, universal id type."""

    namespace: str = ""
    universal_id: str = ""
    universal_id_type: str = ""

    @classmethod
    def parse(cls, text: str | None) -> Authority | None:
        """``"EXCLINIC&2.999.1&ISO"`` or ``"EXCLINIC^2.999.1^ISO"`` or ``"EXCLINIC"``; empty -> None."""
        if not text or not text.strip():
            return None
        parts = [p.strip() for p in re.split(r"[\^&]", text.strip())] + ["", "", ""]
        found = cls(parts[0], parts[1], parts[2])
        return found if (found.namespace or found.universal_id) else None

    def matches(self, other: Authority | None) -> bool:
        """Same domain: the universal ids agree when both have one, otherwise the namespaces."""
        if other is None:
            return False
        if self.universal_id and other.universal_id:
            return self.universal_id.casefold() == other.universal_id.casefold()
        if self.namespace and other.namespace:
            return self.namespace.casefold() == other.namespace.casefold()
        return False

    def __str__(self) -> str:
        """ER7 subcomponent form (unescaped), trailing empty parts dropped: ``NS&UID&ISO``."""
        return "&".join([self.namespace, self.universal_id, self.universal_id_type]).rstrip("&")

    def er7(self) -> str:
        """The HD as CX-4 subcomponents, each escaped."""
        return escape_structured(str(self), components=False)


@dataclass(frozen=True)
class PdqCandidate:
    """One patient as the EHR answered (PID-3 in the queried domain, PID-5, PID-7, PID-8, PV1-19/PID-18)."""

    mrn: str
    authority: Authority | None = None  # PID-3.4 of the identifier taken
    identifier_type: str | None = None  # PID-3.5
    family: str | None = None
    given: str | None = None
    birth_date: str | None = None  # YYYYMMDD
    sex: str | None = None
    encounter: str | None = None  # PV1-19, else PID-18.1


@dataclass(frozen=True)
class PdqQuery:
    """What :func:`build_qbp` writes and :func:`parse_rsp` checks the answer against."""

    mrn: str
    control_id: str  # MSH-10; the answer's MSA-2 must equal it
    query_tag: str  # QPD-2; the answer's QAK-1 must equal it
    created_at: datetime
    authority: Authority | None = None
    sending_application: str = "VITALS_AGENT"  # MSH-3 (ER7 HD, components allowed)
    sending_facility: str = ""  # MSH-4
    receiving_application: str = ""  # MSH-5
    receiving_facility: str = ""  # MSH-6
    processing_id: str = "P"
    limit: int = DEFAULT_LIMIT
    continuation: str = ""  # DSC-1: asks for the next increment of an earlier answer to this query tag

    def __post_init__(self) -> None:
        if not self.mrn.strip():
            raise PdqError("the MRN to look up is empty")
        if re.search(r"[\x00-\x1f\x7f]", self.mrn):
            raise PdqError("the MRN to look up contains a control character")
        for name in ("control_id", "query_tag"):
            if not _CONTROL_ID.match(getattr(self, name)):
                raise PdqError(f"{name} must be 1-20 characters of A-Z a-z 0-9 . _ -")
        if not 1 <= self.limit <= MAX_LIMIT:
            raise PdqError(f"the result limit must be 1..{MAX_LIMIT}")
        if self.processing_id not in ("P", "D", "T"):
            raise PdqError("processing id must be P, D or T")
        if len(self.continuation) > 180 or re.search(r"[\x00-\x1f\x7f]", self.continuation):
            raise PdqError("the continuation pointer is too long or contains a control character")


@dataclass(frozen=True)
class PdqResult:
    """A usable answer: the candidates (possibly none) and what else the supplier said."""

    status: str  # QAK-2: OK or NF
    candidates: tuple[PdqCandidate, ...] = ()
    more: bool = False  # DSC with a continuation pointer: the supplier has more than it sent
    outside_domain: int = 0  # PIDs with no identifier in the queried domain (not candidates)
    continuation: str = ""  # DSC-1 as received (unescaped): ask for the next increment with it


def next_increment(
    query: PdqQuery, result: PdqResult, *, control_id: str, created_at: datetime, limit: int
) -> PdqQuery:
    """The query for the next increment of ``result`` (ITI-21 incremental response): the same QPD (query
    tag, parameters), a fresh MSH-10, ``DSC-1`` the pointer the answer gave, ``RCP-2`` ``limit``."""
    if not result.continuation:
        raise PdqError("the answer has no continuation pointer: there is no next increment")
    return replace(
        query, control_id=control_id, created_at=created_at, continuation=result.continuation, limit=limit
    )


# ------------------------------------------------------------------------------------------ query


def _segment(name: str, fields: Sequence[str]) -> str:
    values = list(fields)
    while values and not values[-1]:
        values.pop()
    return "|".join([name, *values])


def _msh(
    sending_app: str,
    sending_fac: str,
    receiving_app: str,
    receiving_fac: str,
    created_at: datetime,
    message_type: str,
    control_id: str,
    processing_id: str,
) -> str:
    fields = [
        escape_structured(sending_app, subcomponents=()),
        escape_structured(sending_fac, subcomponents=()),
        escape_structured(receiving_app, subcomponents=()),
        escape_structured(receiving_fac, subcomponents=()),
        format_dtm(created_at),
        "",
        message_type,
        control_id,
        processing_id,
        PDQ_VERSION,
    ]
    return f"MSH|{ENCODING_CHARACTERS}|" + "|".join(fields)


def query_parameters(query: PdqQuery) -> str:
    """QPD-3: ``@PID.3.1^<MRN>`` and the domain's ``@PID.3.4.n`` repetitions (ER7, escaped)."""
    reps = [f"@PID.3.1^{escape(query.mrn.strip())}"]
    auth = query.authority
    if auth is not None:
        for n, value in ((1, auth.namespace), (2, auth.universal_id), (3, auth.universal_id_type)):
            if value:
                reps.append(f"@PID.3.4.{n}^{escape(value)}")
    return "~".join(reps)


def build_qbp(query: PdqQuery) -> bytes:
    """The ER7 ``QBP^Q22^QBP_Q21`` for ``query``: segments each ending in CR, UTF-8 encoded."""
    segments = [
        _msh(
            query.sending_application,
            query.sending_facility,
            query.receiving_application,
            query.receiving_facility,
            query.created_at,
            QBP_TYPE,
            query.control_id,
            query.processing_id,
        ),
        _segment("QPD", [QUERY_NAME, query.query_tag, query_parameters(query)]),
        _segment("RCP", ["I", f"{query.limit}^RD"]),
    ]
    if query.continuation:
        segments.append(_segment("DSC", [escape(query.continuation), "I"]))
    return "".join(s + "\r" for s in segments).encode("utf-8")


# ------------------------------------------------------------------------------------------ ER7 reading


@dataclass
class _Seg:
    name: str
    fields: list[str]  # fields[n] = field n (HL7 numbering; for MSH fields[1] is the separator)

    def get(self, n: int) -> str:
        return self.fields[n] if 0 <= n < len(self.fields) else ""


@dataclass
class _Er7:
    segments: list[_Seg]
    component: str = "^"
    repetition: str = "~"
    sub: str = "&"

    def reps(self, value: str) -> list[str]:
        return value.split(self.repetition) if value else []

    def comps(self, value: str) -> list[str]:
        return value.split(self.component)

    def leaf(self, value: str) -> str:
        """One component, first subcomponent only, unescaped and stripped."""
        return unescape(value.split(self.sub)[0]).strip()

    def comp(self, value: str, n: int) -> str:
        parts = self.comps(value)
        return self.leaf(parts[n - 1]) if 0 < n <= len(parts) else ""

    def subs(self, value: str) -> list[str]:
        return [unescape(s).strip() for s in value.split(self.sub)]


def _read_er7(payload: bytes | str, what: str) -> _Er7:
    text = payload.decode("utf-8", errors="replace") if isinstance(payload, bytes) else payload
    text = text.lstrip("\r\n")
    if not text.startswith("MSH") or len(text) < 8:
        raise PdqProtocolError(f"{what} is not an HL7 message (no MSH segment)")
    sep = text[3]
    if sep.isalnum() or sep in "\r\n ":
        raise PdqProtocolError(f"{what} has an invalid MSH field separator")
    lines = [s for s in _SEGMENT_SPLIT.split(text) if s.strip()]
    enc = (lines[0].split(sep)[1] if len(lines[0].split(sep)) > 1 else "") + ENCODING_CHARACTERS
    segments: list[_Seg] = []
    for index, line in enumerate(lines):
        parts = line.split(sep)
        name = parts[0].strip()
        if not _SEGMENT_ID.match(name):
            raise PdqProtocolError(f"{what} has a malformed segment name {name[:8]!r}")
        fields = ["MSH", sep, *parts[1:]] if index == 0 else parts
        segments.append(_Seg(name, fields))
    return _Er7(segments, component=enc[0], repetition=enc[1], sub=enc[3])


# ------------------------------------------------------------------------------------------ answer


def _pick_identifier(
    er7: _Er7, pid3: str, authority: Authority | None, mrn: str
) -> tuple[str, Authority | None, str | None] | None:
    """The PID-3 repetition to bind: in the configured domain, else the one equal to the queried MRN,
    else the first with an id. None when a domain is configured and no repetition is in it."""
    ids: list[tuple[str, Authority | None, str | None]] = []
    for rep in er7.reps(pid3):
        comps = er7.comps(rep)
        value = er7.leaf(comps[0]) if comps else ""
        if not value:
            continue
        auth = Authority.parse("&".join(er7.subs(comps[3]))) if len(comps) > 3 else None
        id_type = er7.leaf(comps[4]) if len(comps) > 4 else ""
        ids.append((value, auth, id_type or None))
    if authority is not None:
        return next((i for i in ids if authority.matches(i[1])), None)
    for entry in ids:
        if entry[0].casefold() == mrn.strip().casefold():
            return entry
    return ids[0] if ids else None


def _name(er7: _Er7, pid5: str) -> tuple[str | None, str | None]:
    reps = er7.reps(pid5)
    if not reps:
        return None, None
    legal = next((r for r in reps if er7.comp(r, 7) == "L"), reps[0])
    return er7.comp(legal, 1) or None, er7.comp(legal, 2) or None


def _birth_date(value: str) -> str | None:
    digits = value[:8]
    if not re.fullmatch(r"\d{8}", digits):
        return None
    try:
        date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None
    return digits


def _candidate(
    er7: _Er7, pid: _Seg, pv1: _Seg | None, authority: Authority | None, mrn: str
) -> PdqCandidate | None:
    ident = _pick_identifier(er7, pid.get(3), authority, mrn)
    if ident is None:
        return None
    family, given = _name(er7, pid.get(5))
    sex = er7.comp(pid.get(8), 1).upper()
    encounter = er7.comp(pv1.get(19), 1) if pv1 is not None else ""
    if not encounter:
        encounter = er7.comp(pid.get(18), 1)
    return PdqCandidate(
        mrn=ident[0],
        authority=ident[1],
        identifier_type=ident[2],
        family=family,
        given=given,
        birth_date=_birth_date(er7.comp(pid.get(7), 1)),
        sex=sex if sex in SEXES else None,
        encounter=encounter or None,
    )


def parse_rsp(payload: bytes | str, query: PdqQuery) -> PdqResult:
    """Read the supplier's answer to ``query``.

    Raises :class:`PdqProtocolError` (not an answer to this query) or :class:`PdqRefusedError` (AE/AR).
    """
    if not payload:
        raise PdqProtocolError("empty answer from the PDQ supplier")
    er7 = _read_er7(payload, "the PDQ answer")
    msh = er7.segments[0]
    by_name: dict[str, list[_Seg]] = {}
    for seg in er7.segments[1:]:
        by_name.setdefault(seg.name, []).append(seg)
    msa = by_name.get("MSA", [None])[0]
    if msa is None:
        raise PdqProtocolError("the PDQ answer has no MSA segment")
    code = er7.comp(msa.get(1), 1).upper()
    if not re.fullmatch(r"[A-Z]{2}", code):
        raise PdqProtocolError("the PDQ answer has an invalid MSA-1 acknowledgement code")
    answered = er7.comp(msa.get(2), 1)
    if answered != query.control_id:
        raise PdqProtocolError("the PDQ answer's MSA-2 does not match the query's MSH-10")
    err_codes = [er7.comp(e.get(3), 1) for e in by_name.get("ERR", []) if er7.comp(e.get(3), 1)]
    if code in ("AE", "AR", "CE", "CR"):
        raise PdqRefusedError(code, err_codes)
    if code not in ("AA", "CA"):
        raise PdqProtocolError("the PDQ answer has an unknown MSA-1 acknowledgement code")
    msh9 = er7.comps(msh.get(9))
    if [er7.leaf(p) for p in msh9[:2]] != ["RSP", "K22"]:
        raise PdqProtocolError("the PDQ supplier did not answer with RSP^K22 (is it a PDQ supplier?)")
    qak = by_name.get("QAK", [None])[0]
    if qak is None:
        raise PdqProtocolError("the PDQ answer has no QAK segment")
    tag = er7.comp(qak.get(1), 1)
    if tag and tag != query.query_tag:
        raise PdqProtocolError("the PDQ answer's QAK-1 does not match the query tag")
    status = er7.comp(qak.get(2), 1).upper() or "OK"
    if status in ("AE", "AR"):
        raise PdqRefusedError(status, err_codes)
    if status not in ("OK", "NF"):
        raise PdqProtocolError("the PDQ answer has an unknown QAK-2 query status")
    candidates: list[PdqCandidate] = []
    outside = 0
    segments = er7.segments
    for index, seg in enumerate(segments):
        if seg.name != "PID":
            continue
        pv1 = None
        for later in segments[index + 1 :]:
            if later.name == "PID":
                break
            if later.name == "PV1":
                pv1 = later
                break
        found = _candidate(er7, seg, pv1, query.authority, query.mrn)
        if found is None:
            outside += 1
        else:
            candidates.append(found)
    dsc = by_name.get("DSC", [None])[0]
    pointer = er7.leaf(dsc.get(1)) if dsc is not None else ""
    return PdqResult(
        status="OK" if candidates else "NF",
        candidates=tuple(candidates),
        more=bool(pointer),
        outside_domain=outside,
        continuation=pointer,
    )


# ------------------------------------------------------------------------------------------ supplier


@dataclass(frozen=True)
class QbpRequest:
    """What a supplier reads from a QBP^Q22."""

    control_id: str
    query_tag: str
    qpd: str  # the QPD segment as received (echoed in the answer)
    parameters: dict[str, str]  # "PID.3.1" -> value
    limit: int
    header: tuple[str, str, str, str]  # MSH-3..6 as received (raw)
    processing_id: str
    continuation: str = ""  # DSC-1: the next increment of an earlier answer is asked for


def parse_qbp(payload: bytes | str) -> QbpRequest:
    """Read a QBP^Q22 (for the supplier side and for tests). Raises :class:`PdqProtocolError`."""
    er7 = _read_er7(payload, "the query")
    msh = er7.segments[0]
    if [er7.leaf(p) for p in er7.comps(msh.get(9))[:2]] != ["QBP", "Q22"]:
        raise PdqProtocolError("not a QBP^Q22 query")
    qpd = next((s for s in er7.segments if s.name == "QPD"), None)
    if qpd is None:
        raise PdqProtocolError("the query has no QPD segment")
    if er7.comp(qpd.get(1), 1) != QUERY_NAME:
        raise PdqProtocolError(f"QPD-1 is not {QUERY_NAME!r}")
    params: dict[str, str] = {}
    for rep in er7.reps(qpd.get(3)):
        comps = er7.comps(rep)
        match = _QIP.match(comps[0].strip()) if comps else None
        if match is None:
            raise PdqProtocolError("QPD-3 holds a parameter that is not @PID.n[.n[.n]]")
        params[match.group(1)] = er7.leaf(comps[1]) if len(comps) > 1 else ""
    rcp = next((s for s in er7.segments if s.name == "RCP"), None)
    limit = DEFAULT_LIMIT
    if rcp is not None and er7.comp(rcp.get(2), 1).isdigit():
        limit = max(1, min(MAX_LIMIT, int(er7.comp(rcp.get(2), 1))))
    dsc = next((s for s in er7.segments if s.name == "DSC"), None)
    return QbpRequest(
        control_id=er7.comp(msh.get(10), 1),
        query_tag=er7.comp(qpd.get(2), 1),
        qpd="|".join(qpd.fields),
        parameters=params,
        limit=limit,
        header=(msh.get(3), msh.get(4), msh.get(5), msh.get(6)),
        processing_id=er7.comp(msh.get(11), 1) or "P",
        continuation=er7.leaf(dsc.get(1)) if dsc is not None else "",
    )


def _pid(set_id: int, patient: PdqCandidate, default_authority: Authority | None) -> str:
    auth = patient.authority or default_authority
    cx = [escape(patient.mrn), "", "", auth.er7() if auth else "", escape(patient.identifier_type or "MR")]
    name = ""
    if patient.family or patient.given:
        name = f"{escape(patient.family or '')}^{escape(patient.given or '')}^^^^^L"
    fields = [""] * 18
    fields[0] = str(set_id)
    fields[2] = "^".join(cx)
    fields[4] = name
    fields[6] = patient.birth_date or ""
    fields[7] = patient.sex or ""
    fields[17] = escape(patient.encounter) if patient.encounter else ""
    return _segment("PID", fields)


@dataclass
class PdqDirectory:
    """A tiny Patient Demographics Supplier: answers ``QBP^Q22`` by exact identifier from a patient list.

    Supports QPD-3 ``@PID.3.1`` (required) with ``@PID.3.4.1``/``.2`` (the domain; a domain other than
    ``authority`` finds nothing), and optional ``@PID.5.1.1``, ``@PID.5.2``, ``@PID.7.1``, ``@PID.8``
    filters. ``RCP-2`` limits the PIDs sent, and so does ``page_size`` (the supplier's own increment, as
    real suppliers cap a page); more matches add ``DSC`` with the continuation pointer
    ``<query tag>-<offset>``, and a query with the same QPD and that pointer in ``DSC-1`` gets the next
    increment (ITI-21 incremental response). A pointer it did not give is answered ``AE``.
    """

    patients: list[PdqCandidate]
    authority: Authority | None = None
    application: str = "PDQ_SUPPLIER"
    facility: str = ""
    queries: list[QbpRequest] = field(default_factory=list)
    page_size: int | None = None

    def find(self, params: dict[str, str]) -> list[PdqCandidate]:
        mrn = params.get("PID.3.1", "")
        if not mrn:
            return []
        wanted = Authority.parse(
            "&".join(params.get(f"PID.3.4.{n}", "") for n in (1, 2, 3)).strip("&") or None
        )
        out = []
        for patient in self.patients:
            if patient.mrn.casefold() != mrn.casefold():
                continue
            domain = patient.authority or self.authority
            if wanted is not None and not wanted.matches(domain):
                continue
            if not _filters_match(patient, params):
                continue
            out.append(patient)
        return out

    def answer(self, payload: bytes | str, *, control_id: str, now: datetime, ack_code: str = "AA") -> str:
        """The RSP^K22 (ER7 text, CR-terminated segments) for one query. A message that is not a
        usable QBP^Q22 is answered ``AR`` (MSA-2 = its MSH-10 when it can be read)."""
        try:
            request = parse_qbp(payload)
        except PdqProtocolError:
            return self._reject(payload, control_id=control_id, now=now)
        self.queries.append(request)
        sending_app = unescape_header(request.header[2]) or self.application
        sending_fac = unescape_header(request.header[3]) or self.facility
        msh = _msh(
            sending_app,
            sending_fac,
            unescape_header(request.header[0]),
            unescape_header(request.header[1]),
            now,
            RSP_TYPE,
            control_id,
            request.processing_id,
        )
        offset = 0
        error = "QPD^1^3^1^1|207^Application internal error^HL70357"
        if ack_code == "AA" and request.continuation:
            tag, _, start = request.continuation.rpartition("-")
            if tag == request.query_tag and start.isdigit():
                offset = int(start)
            else:  # not a pointer this supplier gave for this query
                ack_code, error = "AE", "DSC^1^1^1^1|103^Table value not found^HL70357"
        if ack_code != "AA":
            segments = [
                msh,
                f"MSA|{ack_code}|{escape(request.control_id)}",
                f"ERR||{error}|E",
                f"QAK|{escape(request.query_tag)}|{ack_code}",
                request.qpd,
            ]
            return "".join(s + "\r" for s in segments)
        found = self.find(request.parameters)
        status = "OK" if found else "NF"
        segments = [msh, f"MSA|AA|{escape(request.control_id)}", f"QAK|{escape(request.query_tag)}|{status}"]
        segments.append(request.qpd)
        size = min(request.limit, self.page_size or request.limit)
        for set_id, patient in enumerate(found[offset : offset + size], start=1):
            segments.append(_pid(set_id, patient, self.authority))
            segments.append("QRI|1")  # candidate confidence: an exact identifier match
        if len(found) > offset + size:
            segments.append(f"DSC|{escape(request.query_tag)}-{offset + size}|I")
        return "".join(s + "\r" for s in segments)

    def _reject(self, payload: bytes | str, *, control_id: str, now: datetime) -> str:
        their_id = ""
        try:
            er7 = _read_er7(payload, "the query")
            their_id = er7.comp(er7.segments[0].get(10), 1)
        except PdqProtocolError:
            pass
        msh = _msh(self.application, self.facility, "", "", now, "ACK^Q22^ACK", control_id, "P")
        segments = [msh, f"MSA|AR|{escape(their_id)}", "ERR|||200^Unsupported message type^HL70357|E"]
        return "".join(s + "\r" for s in segments)


def unescape_header(raw: str) -> str:
    """An MSH HD field as received -> the structured text :func:`_msh` escapes again."""
    return "^".join(unescape(c) for c in raw.split("^")) if raw else ""


def _filters_match(patient: PdqCandidate, params: dict[str, str]) -> bool:
    checks = {
        "PID.5.1.1": patient.family,
        "PID.5.1": patient.family,
        "PID.5.2": patient.given,
        "PID.7.1": patient.birth_date,
        "PID.7": patient.birth_date,
        "PID.8": patient.sex,
    }
    for key, have in checks.items():
        want = params.get(key)
        if want and (have or "").casefold() != want.casefold():
            return False
    return True


# ------------------------------------------------------------------------------------------ CSV


CSV_COLUMNS = ("mrn", "name", "dob", "sex", "visit")


def parse_patients_csv(text: str, *, authority: Authority | None = None) -> list[PdqCandidate]:
    """Patients for :class:`PdqDirectory` from CSV text with a header row ``mrn,name,dob,sex,visit``
    (``name`` as ``FAMILY^GIVEN``; ``dob`` ``YYYYMMDD`` or ``YYYY-MM-DD``; ``visit`` optional).
    Raises ValueError naming the line of the first bad row."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    missing = [c for c in ("mrn", "name", "dob", "sex") if c not in header]
    if missing:
        raise ValueError(f"the CSV header must name {', '.join(CSV_COLUMNS)} (missing: {', '.join(missing)})")
    out: list[PdqCandidate] = []
    for row in reader:
        line = reader.line_num
        values = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        if not any(values.values()):
            continue
        mrn = values.get("mrn", "")
        if not mrn:
            raise ValueError(f"line {line}: mrn is empty")
        family, _, given = values.get("name", "").partition("^")
        dob = values.get("dob", "").replace("-", "")
        if dob and _birth_date(dob) is None:
            raise ValueError(f"line {line}: dob must be YYYYMMDD or YYYY-MM-DD")
        sex = values.get("sex", "").upper()
        if sex and sex not in SEXES:
            raise ValueError(f"line {line}: sex must be one of F, M, O, U, A, N")
        out.append(
            PdqCandidate(
                mrn=mrn,
                authority=authority,
                identifier_type="MR",
                family=family or None,
                given=given or None,
                birth_date=dob or None,
                sex=sex or None,
                encounter=values.get("visit") or None,
            )
        )
    return out


def with_authority(patients: Iterable[PdqCandidate], authority: Authority | None) -> list[PdqCandidate]:
    """The same patients under ``authority`` (where they have none)."""
    return [p if p.authority is not None else replace(p, authority=authority) for p in patients]
