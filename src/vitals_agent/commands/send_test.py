"""``vitals-agent send-test --config FILE [--fhir]``: send one synthetic test message, report the answer in
one line.

The message is a pulse-oximeter reading (SpO2 97 %, pulse 72 /min) built with the site's receiver profile
but processing id ``T`` (MSH-11), so an interface engine files it as test data. It is sent once, directly
(not through the outbox), over the configured link (TLS included), and nothing is retried.
Exit status: 0 for AA/CA, 1 for any other answer or no answer.

``--fhir`` sends the same reading as a FHIR transaction Bundle to ``[fhir] base_url`` instead (with its
authentication and TLS), its resources labelled ``HTEST`` (test data), and prints the HTTP status and what
it means for delivery (delivered / retried / dead-lettered, with the OperationOutcome's text).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal

from vitals_agent.agent.paths import data_dir, gateway_eui64
from vitals_agent.agent.pipeline.profile import message_profile
from vitals_agent.commands._options import add_command, add_config_option, config_from
from vitals_agent.config.schema import Config
from vitals_agent.errors import VitalsAgentError
from vitals_agent.hl7.ack import parse_ack
from vitals_agent.hl7.oru import build_oru, new_control_id
from vitals_agent.models import DeviceClass, DeviceIdentity, Measurement, Reading, ReadingFlag
from vitals_agent.net.mllp import MllpClient
from vitals_agent.net.tls import ssl_context_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(sub, "send-test", cmd_send_test)
    add_config_option(p)
    p.add_argument("--timeout", type=float, default=None, help="seconds to wait for the ACK ([ehr] default)")
    p.add_argument("--fhir", action="store_true", help="send a FHIR transaction Bundle to [fhir] base_url")


def synthetic_reading(now: datetime) -> Reading:
    return Reading(
        device=DeviceIdentity(
            id="send-test", manufacturer="vitals-agent", model="send-test", serial_number="TEST"
        ),
        device_class=DeviceClass.PULSE_OXIMETER,
        measurements=(
            Measurement(metric="spo2", value=Decimal("97"), unit="%"),
            Measurement(metric="pulse_rate_oximeter", value=Decimal("72"), unit="/min"),
        ),
        observed_at=now,
        received_at=now,
        flags=(ReadingFlag.TEST_DATA,),
    )


async def cmd_send_test(args: argparse.Namespace) -> int:
    config = config_from(args)
    if args.fhir:
        return await _send_test_fhir(config, args.timeout)
    ehr = config.ehr
    ssl_context = ssl_context_from(ehr)
    # The agent's gateway id when it has one; nothing is written into its data_dir from here.
    gateway = gateway_eui64(config, data_dir(config, create=False), persist=False)
    profile = dataclasses.replace(message_profile(config, gateway), processing_id="T")
    now = datetime.now(UTC)
    control_id = new_control_id()
    body = build_oru(synthetic_reading(now), profile, control_id=control_id, created_at=now)
    client = MllpClient(
        ehr.host,
        ehr.port,
        connect_timeout=ehr.connect_timeout_seconds,
        ssl_context=ssl_context,
        server_hostname=ehr.server_name,
    )
    timeout = args.timeout if args.timeout is not None else ehr.ack_timeout_seconds
    started = time.perf_counter()
    try:
        payload = await client.send(body, timeout)
    finally:
        await client.close()
    elapsed_ms = (time.perf_counter() - started) * 1000
    ack = parse_ack(payload)
    link = "TLS" if ssl_context is not None else "plain"
    matches = ack.control_id == control_id
    line = f"{ack.describe()} from {client.peer} ({link}) for {control_id} in {elapsed_ms:.0f} ms"
    if not matches:
        line += f" -- but MSA-2 is {ack.control_id!r}: not an ACK for this message"
    print(line)
    sys.stdout.flush()
    return 0 if ack.accepted and matches else 1


async def _send_test_fhir(config: Config, timeout: float | None) -> int:
    from vitals_agent.agent.pipeline.profile import fhir_profile
    from vitals_agent.fhir.answer import Delivered, Rejected, classify
    from vitals_agent.fhir.bundle import build_bundle
    from vitals_agent.net.fhir_http import fhir_client

    fhir = config.fhir
    if fhir.base_url is None:
        raise VitalsAgentError("[fhir] base_url is not set in the configuration")
    if timeout is not None:
        fhir = fhir.model_copy(update={"timeout_seconds": timeout})
    profile = fhir_profile(config, gateway_eui64(config, data_dir(config)))
    now = datetime.now(UTC)
    message_id = new_control_id()
    body = build_bundle(synthetic_reading(now), profile, message_id=message_id, created_at=now)
    client = fhir_client(fhir)
    try:
        answer = await client.post(body, request_id=message_id)
    finally:
        await client.close()
    verdict = classify(
        answer.status, answer.headers, answer.body, now, retry_after_cap=fhir.retry_after_max_seconds
    )
    link = "TLS" if client.ssl_context is not None else "plain"
    line = f"HTTP {answer.status} from {client.peer} ({link}) for Bundle {message_id}"
    line += f" in {answer.elapsed_ms} ms: "
    if isinstance(verdict, Delivered):
        line += "delivered"
    elif isinstance(verdict, Rejected):
        line += f"would be dead-lettered: {verdict.text}"
    else:
        line += f"would be retried: {verdict.reason}"
    print(line)
    sys.stdout.flush()
    return 0 if isinstance(verdict, Delivered) else 1
