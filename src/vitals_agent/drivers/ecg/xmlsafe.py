"""Hardened XML parsing for cart files: defusedxml (no DTD, no entity expansion, no external or network
access), a size limit checked before parsing, and every parser failure mapped to a DecodeError."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import defusedxml
import defusedxml.ElementTree as DET

from vitals_agent.drivers.ecg.common import check_size
from vitals_agent.errors import DecodeError

DEFAULT_MAX_XML_BYTES = 16 * 1024 * 1024


def parse_xml(data: bytes, *, max_bytes: int = DEFAULT_MAX_XML_BYTES, what: str = "XML") -> ET.Element:
    """Parse ``data`` (any encoding its declaration/BOM states: UTF-8, UTF-16) into an element tree."""
    check_size(data, max_bytes)
    try:
        root = DET.fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden:
        raise DecodeError(f"{what}: document type declarations are refused (possible XML bomb)") from None
    except defusedxml.EntitiesForbidden:
        raise DecodeError(f"{what}: entity declarations are refused (possible XML bomb)") from None
    except defusedxml.ExternalReferenceForbidden:
        raise DecodeError(f"{what}: external references are refused") from None
    except defusedxml.DefusedXmlException as exc:
        raise DecodeError(f"{what}: refused ({type(exc).__name__})") from None
    except ET.ParseError as exc:
        raise DecodeError(f"invalid {what}: {exc}") from None
    except (ValueError, LookupError, UnicodeError) as exc:  # odd encodings, NUL bytes
        raise DecodeError(f"invalid {what}: {exc}") from None
    if not isinstance(root, ET.Element):
        raise DecodeError(f"invalid {what}: no root element")
    return root


def local(tag: str) -> str:
    """An element's tag without its namespace."""
    return tag.rsplit("}", 1)[-1]


def child(elem: ET.Element | None, *names: str) -> ET.Element | None:
    """The first descendant along ``names`` (namespace-agnostic local names), or None."""
    cur = elem
    for name in names:
        if cur is None:
            return None
        cur = next((c for c in cur if local(c.tag) == name), None)
    return cur


def children(elem: ET.Element | None, name: str) -> list[ET.Element]:
    if elem is None:
        return []
    return [c for c in elem if local(c.tag) == name]


def path_all(elem: ET.Element | None, *names: str) -> list[ET.Element]:
    """Every element reachable along ``names`` (each step over all matching children)."""
    level = [elem] if elem is not None else []
    for name in names:
        level = [c for e in level for c in e if local(c.tag) == name]
    return level


def text(elem: ET.Element | None) -> str | None:
    if elem is None or elem.text is None:
        return None
    value = " ".join(elem.text.split())
    return value or None
