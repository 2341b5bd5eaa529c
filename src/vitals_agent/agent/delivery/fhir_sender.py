"""The FHIR destination's sender: the shared delivery loop with a :class:`FhirLink`.

Each queued Bundle is POSTed to ``[fhir] base_url``; the answer is judged by
:func:`vitals_agent.fhir.answer.classify`: ``2xx`` delivers (the outbox row is removed), ``408``/``429``/
``5xx``/``401``/a wrong base URL retry the same Bundle after the back-off and never sooner than the
server's ``Retry-After``, any other ``4xx`` dead-letters it with the OperationOutcome's text. Timeouts,
resets and refused connections are link failures as for the EHR. A ``500`` and a lost answer count towards
the poison-message probe (a Bundle the server always fails on is dead-lettered once a later one goes
through); ``503``, ``429`` and ``408`` say nothing about the Bundle and never do.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Unpack

from vitals_agent.agent.delivery.link import Answer, Link
from vitals_agent.agent.delivery.policy import Settings
from vitals_agent.agent.delivery.sender import QueueSender, SenderOptions
from vitals_agent.agent.storage.outbox import Outbox, OutboxMessage
from vitals_agent.config.fhir import FhirConfig
from vitals_agent.errors import RetryLaterError
from vitals_agent.fhir.answer import Delivered, Rejected, classify
from vitals_agent.net.fhir_http import FhirClient, fhir_client


class FhirLink(Link[FhirClient]):
    """One Bundle per request; the answer judged by the FHIR rules."""

    def __init__(
        self,
        client: FhirClient,
        *,
        retry_after_cap: float = 3600.0,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        super().__init__(client)
        self.retry_after_cap = retry_after_cap
        self.now = now

    async def exchange(self, msg: OutboxMessage, was_acked: Callable[[str], bool]) -> Answer:
        answer = await self.client.post(msg.body, request_id=msg.control_id)
        verdict = classify(
            answer.status, answer.headers, answer.body, self.now(), retry_after_cap=self.retry_after_cap
        )
        code = f"HTTP {answer.status}"
        if isinstance(verdict, Delivered):
            return Answer(True, code, True, "", code)
        if isinstance(verdict, Rejected):
            return Answer(False, code, True, verdict.text, code)
        if answer.status >= 500 or verdict.auth:
            self.client.abort()  # a fresh connection (and token) for the next try
        raise RetryLaterError(
            f"FHIR server {self.client.peer}: {verdict.reason}",
            retry_after=verdict.retry_after,
            after_connect=answer.status == 500,
        )


class FhirSender(QueueSender):
    """Delivers the outbox's ``fhir`` rows to ``[fhir] base_url``."""

    def __init__(
        self,
        outbox: Outbox,
        fhir: FhirConfig,
        *,
        client: FhirClient | None = None,
        **options: Unpack[SenderOptions],
    ) -> None:
        self.fhir = fhir
        self.client = client or fhir_client(fhir)
        link = FhirLink(self.client, retry_after_cap=fhir.retry_after_max_seconds)
        settings = Settings.from_fhir(fhir)
        super().__init__(
            outbox, link, settings, destination="fhir", backlog_warning=fhir.backlog_warning, **options
        )
