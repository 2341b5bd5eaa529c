"""FHIR builder benchmark: cost per reading and memory, each beside a baseline measured in the same run.

* Build time: the same readings (a NIBP reading with four metrics, an oximeter reading, a 12-lead EKG with
  statements and a 64 KiB original file) built as a FHIR transaction Bundle (validated with the
  fhir.resources R4B models and serialised) and, as the baseline, as the HL7 v2 ORU^R01 the agent already
  sends. Printed: median microseconds per reading for each and their ratio; also the Bundle without the
  fhir.resources validation, to show what the validation costs.
* Memory: RSS of a fresh interpreter after importing the agent's HL7 builder (baseline) and after also
  importing the FHIR builder and building one Bundle (which loads the R4B models).

Run: ``.venv/bin/python bench/bench_fhir.py [--n 300]``.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vitals_agent.fhir.bundle import FhirProfile, build_bundle, bundle_dict
from vitals_agent.fhir.wire import dumps_bytes
from vitals_agent.hl7.oru import MessageProfile, build_oru
from vitals_agent.models import (
    Attachment,
    DeviceClass,
    DeviceIdentity,
    Measurement,
    PatientInfo,
    Reading,
)

T0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
GATEWAY = "00000000000000AA"


def readings() -> dict[str, Reading]:
    dev = DeviceIdentity(id="d", manufacturer="Acme", model="M", serial_number="S1", eui64="0011223344556677")

    def reading(cls: DeviceClass, *values: tuple[str, str, str], **kw: object) -> Reading:
        ms = tuple(Measurement(metric=k, value=Decimal(v), unit=u) for k, v, u in values)
        return Reading(device=dev, device_class=cls, measurements=ms, observed_at=T0, received_at=T0, **kw)

    return {
        "nibp": reading(
            DeviceClass.BLOOD_PRESSURE,
            ("bp_systolic", "120", "mm[Hg]"),
            ("bp_diastolic", "80", "mm[Hg]"),
            ("bp_mean", "93", "mm[Hg]"),
            ("pulse_rate", "72", "/min"),
        ),
        "oximeter": reading(
            DeviceClass.PULSE_OXIMETER, ("spo2", "97", "%"), ("pulse_rate_oximeter", "64", "/min")
        ),
        "ekg": reading(
            DeviceClass.ECG,
            ("ecg_heart_rate", "61", "/min"),
            ("ecg_qrs_duration", "92", "ms"),
            ("ecg_qt_interval", "400", "ms"),
            ("ecg_p_axis", "45", "deg"),
            statements=("Sinus rhythm", "Normal ECG"),
            attachments=(Attachment(name="e.scp", media_type="application/octet-stream", data=bytes(65536)),),
        ),
    }


def _serialised(build: Callable[[], dict[str, object]]) -> bytes:
    return dumps_bytes(build())


def median_us(fn: Callable[[], object], n: int) -> float:
    fn()  # warm-up (imports, caches)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def rss_after(code: str) -> int:
    probe = (
        f"{code}\nfor line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS:'): print(line.split()[1])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    fhir = FhirProfile(gateway_eui64=GATEWAY, patient_system="urn:oid:2.999.1", location="CLINIC^ROOM12")
    hl7 = MessageProfile(facility="CLINIC", location="CLINIC^ROOM12", gateway_eui64=GATEWAY)
    patient = PatientInfo(mrn="0012345", family_name="Doe", given_name="Jane")
    head = f"{'reading':<10} {'ORU µs':>9} {'Bundle µs':>10} {'ratio':>6}"
    print(f"{head} {'unvalidated µs':>15} {'bytes ORU/Bundle':>18}")
    for name, reading in readings().items():
        oru_us = median_us(functools.partial(build_oru, reading, hl7, control_id="C1", created_at=T0), args.n)
        bundle = functools.partial(
            build_bundle, reading, fhir, message_id="C1", created_at=T0, patient=patient
        )
        fhir_us = median_us(bundle, args.n)
        unvalidated = functools.partial(
            bundle_dict, reading, fhir, message_id="C1", created_at=T0, patient=patient
        )
        raw_us = median_us(functools.partial(_serialised, unvalidated), args.n)
        sizes = (
            len(build_oru(reading, hl7, control_id="C1", created_at=T0)),
            len(build_bundle(reading, fhir, message_id="C1", created_at=T0, patient=patient)),
        )
        print(
            f"{name:<10} {oru_us:>9.0f} {fhir_us:>10.0f} {fhir_us / oru_us:>6.1f} {raw_us:>15.0f}"
            f" {sizes[0]:>8}/{sizes[1]:<9}"
        )
    base = rss_after("import vitals_agent.hl7.oru")
    with_fhir = rss_after(
        f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_fhir as b\n"
        "from vitals_agent.fhir.bundle import FhirProfile, build_bundle\n"
        "build_bundle(b.readings()['nibp'], FhirProfile(gateway_eui64=b.GATEWAY),"
        " message_id='M', created_at=b.T0)"
    )
    print(f"RSS after importing the ORU builder: {base / 1024:.1f} MiB (baseline)")
    extra = (with_fhir - base) / 1024
    print(f"RSS after also building a FHIR Bundle: {with_fhir / 1024:.1f} MiB (+{extra:.1f} MiB)")


if __name__ == "__main__":
    main()
