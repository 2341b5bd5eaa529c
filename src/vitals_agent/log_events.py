"""The names of the agent's log events: one dotted style (``area.what``), one place.

People who alert on the agent's log (journald, a log shipper) match on these names; the README lists them
with their levels. Every ``log.<level>(...)`` in the package names its event with a constant from here
(``tests/test_architecture.py`` checks that), so a name changes only on purpose. Each comment gives the
level(s) the event is logged at and what it means; the record's other keys carry the details. Patient data
never appears in an event at INFO or above.
"""

from __future__ import annotations

# ruff: noqa: E501, S105

# --- agent: the agent process
AGENT_STARTING = "agent.starting"  # INFO: the agent is starting (``version``, ``devices``, ``destinations``)
AGENT_STOPPING = "agent.stopping"  # INFO: the agent was asked to stop
AGENT_STOPPED = "agent.stopped"  # INFO: the agent stopped cleanly
AGENT_STOPPED_STORAGE_FAILED = (
    "agent.stopped_storage_failed"  # ERROR: agent stopped because its storage failed
)
AGENT_TASKS_NOT_STOPPED = "agent.tasks_not_stopped"  # WARNING: some tasks did not stop in time
AGENT_TICK_READING_NOT_ACCEPTED = "agent.tick_reading_not_accepted"  # DEBUG: tick: reading not accepted
AGENT_TICK_FAILED = "agent.tick_failed"  # EXCEPTION: tick failed; continuing
AGENT_OPEN_FILES_LIMIT_NOT_RAISED = (
    "agent.open_files_limit_not_raised"  # WARNING: open files limit not raised
)
AGENT_OPEN_FILES_LIMIT_RAISED = "agent.open_files_limit_raised"  # DEBUG: open files limit raised

# --- clock: time
CLOCK_STEPPED = "clock.stepped"  # WARNING: the wall clock stepped (``direction``: back or forward; stored times are clamped)

# --- device: devices and their links
DEVICE_CONNECTED = "device.connected"  # INFO: a device's link is up (``device``)
DEVICE_DISCONNECTED = "device.disconnected"  # INFO: a device's link is down; it is reconnected with back-off
DEVICE_LINK_ENDED = "device.link_ended"  # DEBUG: device link ended
DEVICE_UNAVAILABLE = "device.unavailable"  # WARNING: device unavailable; will retry
DEVICE_STILL_UNAVAILABLE = "device.still_unavailable"  # DEBUG: device still unavailable
DEVICE_CRASH_TRACEBACK = "device.crash_traceback"  # DEBUG: device task crash traceback
DEVICE_STABLE_AGAIN = "device.stable_again"  # INFO: device task ran stably again after crashes
DEVICE_DECODE_FAILED = "device.decode_failed"  # DEBUG: decode failed
DEVICE_READING_NOT_ACCEPTED = "device.reading_not_accepted"  # DEBUG: reading not accepted
DEVICE_NOT_STOPPED = "device.not_stopped"  # WARNING: device did not stop in time
DEVICE_SILENT = "device.silent"  # INFO: link up but nothing heard for ``silent_after`` seconds (``quiet_seconds``); said once
DEVICE_TALKING_AGAIN = "device.talking_again"  # INFO: a silent device is heard from again

# --- serial: serial ports
SERIAL_OPENED = "serial.opened"  # DEBUG: serial port opened
SERIAL_CLOSED = "serial.closed"  # DEBUG: serial port closed
SERIAL_WRITE = "serial.write"  # DEBUG: bytes written to a serial device (hex)
SERIAL_POLL_STOPPED = "serial.poll_stopped"  # DEBUG: serial poll stopped
SERIAL_SETTINGS_UNCONFIRMED = (
    "serial.settings_unconfirmed"  # WARNING: terminal server did not confirm every line setting
)
SERIAL_SETTINGS_DIFFER = "serial.settings_differ"  # WARNING: terminal server applied other line settings

# --- pty: pseudo-terminals (simulators, tests)
PTY_PLUGGED = "pty.plugged"  # DEBUG: a simulator's pseudo-terminal appeared
PTY_UNPLUGGED = "pty.unplugged"  # DEBUG: a simulator's pseudo-terminal went away

# --- simulator: device simulators
SIMULATOR_SENT = "simulator.sent"  # DEBUG: sim send
SIMULATOR_RECEIVED = "simulator.received"  # DEBUG: sim received
SIMULATOR_CONNECTION_ENDED = "simulator.connection_ended"  # DEBUG: simulated device connection ended
SIMULATOR_CONNECTION_DROPPED = "simulator.connection_dropped"  # DEBUG: simulated device connection dropped

# --- ble: Bluetooth LE
BLE_SUBSCRIBED = "ble.subscribed"  # DEBUG: notifications/indications subscribed (``characteristics``)
BLE_READ_FAILED = "ble.read_failed"  # DEBUG: a Device Information or battery characteristic could not be read (the link stays up)
BLE_RACP_REQUESTED = "ble.racp_requested"  # DEBUG: stored records requested through RACP (``request``, hex)
BLE_CLOCK_READ_REFUSED = (
    "ble.clock_read_refused"  # INFO: the device refused to let its clock be read (offset unknown)
)
BLE_CLOCK_SET = "ble.clock_set"  # INFO: the device clock was set from the host
BLE_CLOCK_SET_FAILED = "ble.clock_set_failed"  # WARNING: the device clock could not be set (its time stamps are corrected by the measured offset)
BLE_DEVICE_CLOCK_UNSET = (
    "ble.device_clock_unset"  # INFO: the device clock has never been set (its time stamps are not used)
)
BLE_DEVICE_CLOCK = "ble.device_clock"  # INFO: the device clock's offset from the host (``offset_seconds``)
BLE_RACP_RESPONSE = "ble.racp_response"  # INFO: the device answered the RACP request (``result``)
BLE_FAILED_MEASUREMENT_DROPPED = (
    "ble.failed_measurement_dropped"  # INFO: the device reported a failed measurement: nothing to send
)
BLE_NOT_REPORTED = "ble.not_reported"  # DEBUG: a record that is not a reading (``reason``), not sent
BLE_DUPLICATE_RECORD_SKIPPED = (
    "ble.duplicate_record_skipped"  # INFO: a record already sent (the device re-sends its memory): skipped
)
BLE_RECORD_REFUSED = "ble.record_refused"  # WARNING: BLE record refused by the agent

# --- ecg: EKG carts
ECG_FILE_ALREADY_DELIVERED = "ecg.file_already_delivered"  # INFO: ecg file already delivered, not sent again
ECG_DECODER_CRASHED = "ecg.decoder_crashed"  # ERROR: ecg decoder failed unexpectedly
ECG_DECODER_FAILURE = "ecg.decoder_failure"  # DEBUG: ecg decoder failure
ECG_HANDOVER_CRASHED = "ecg.handover_crashed"  # ERROR: ecg reading hand-over failed unexpectedly
ECG_HANDOVER_FAILURE = "ecg.handover_failure"  # DEBUG: ecg reading hand-over failure
ECG_FILE_DELIVERED = "ecg.file_delivered"  # INFO: ecg file delivered
ECG_ENTRY_SKIPPED = (
    "ecg.entry_skipped"  # WARNING: ecg folder entry skipped: not a regular file, never followed or read
)
ECG_ENTRY_SKIPPED_DETAIL = "ecg.entry_skipped_detail"  # DEBUG: ecg folder entry skipped
ECG_FILE_NOT_READABLE_YET = "ecg.file_not_readable_yet"  # DEBUG: ecg file not readable yet
ECG_FILE_INCOMPLETE = "ecg.file_incomplete"  # DEBUG: ecg file incomplete, waiting
ECG_READING_NOT_ACCEPTED = "ecg.reading_not_accepted"  # WARNING: ecg reading not accepted, will retry
ECG_FILE_REPLACED = "ecg.file_replaced"  # DEBUG: ecg file replaced before its move; looked at again
ECG_FILE_NOT_MOVED = "ecg.file_not_moved"  # ERROR: cannot move ecg file
ECG_FILE_FAILED = "ecg.file_failed"  # INFO: ecg file moved to failed/
ECG_REASON_NOT_WRITTEN = "ecg.reason_not_written"  # WARNING: reason file for a failed ecg file not written
ECG_RECEIVED_FILE_FAILED = "ecg.received_file_failed"  # INFO: received ecg file failed
ECG_SAVE_LINK_NOT_FOLLOWED = (
    "ecg.save_link_not_followed"  # DEBUG/WARNING: link in the ecg save folder not followed
)
ECG_SAVE_NOT_FOLLOWED = "ecg.save_not_followed"  # ERROR: cannot save received ecg file: not followed
ECG_SAVE_FAILED = "ecg.save_failed"  # ERROR: cannot save received ecg file

# --- reading: the data path
READING_VALUES_WITHHELD = "reading.values_withheld"  # DEBUG: values not sent
READING_HELD_PATIENT_MISMATCH = "reading.held_patient_mismatch"  # WARNING: message held for review, not sent: the device's patient is not the room's patient
READING_HELD_DEVICE_UNKNOWN = (
    "reading.held_device_unknown"  # WARNING: held reading of a device no longer configured stays held
)
READING_BEFORE_PATIENT = (
    "reading.before_patient"  # INFO: reading not sent: taken before the current patient was set
)
READING_DUPLICATE_SOURCE = (
    "reading.duplicate_source"  # INFO: reading not queued again: its source was queued or held before
)
READING_REFUSED_PATIENT_CONTEXT = (
    "reading.refused_patient_context"  # ERROR: reading refused: patient context unavailable
)
READING_REFUSED_NOT_DURABLE = (
    "reading.refused_not_durable"  # ERROR: reading refused: could not be queued durably
)
READING_QUEUED = "reading.queued"  # INFO: a reading is in the outbox, durably (``destinations``, ``metrics``; no patient data)
READING_BUILD_FAILURE = "reading.build_failure"  # DEBUG: message build failure
READING_NOT_SENT_TO_DESTINATION = "reading.not_sent_to_destination"  # ERROR: one destination cannot express this reading (``destination``, ``what``); the other one sends it
READING_REFUSED_NOT_CONFORMANT = "reading.refused_not_conformant"  # ERROR: no enabled destination can express this reading (``what``): refused, audited
READING_REFUSED_NOT_BUILT = (
    "reading.refused_not_built"  # ERROR: the message could not be built (``what``): refused, audited
)
READING_ATTACHMENT_DROPPED = "reading.attachment_dropped"  # WARNING: attachment not sent: the message would be over [ehr] max_message_bytes (an NTE says so)
READING_CHARS_REPLACED = "reading.chars_replaced"  # WARNING (first time), then INFO: characters the receiver's charset cannot carry were replaced with the marker (``replaced``, ``marker``)
READING_CHARS_ESCAPED = "reading.chars_escaped"  # INFO (first time), then DEBUG: characters the receiver's charset cannot carry were sent as HL7 hex escapes (``escaped``)
READING_REFUSED_NOT_LISTED = (
    "reading.refused_not_listed"  # ERROR: Reading refused: the review list could not be written
)

# --- audit: the audit trail
AUDIT_NOT_WRITTEN = "audit.not_written"  # ERROR: audit record not written
AUDIT_WRITE_FAILED = "audit.write_failed"  # ERROR: audit record could not be written
AUDIT_RESTORED = "audit.restored"  # INFO: audit records restored from the outbox after a stop
AUDIT_APPEND_PENDING = "audit.append_pending"  # WARNING: audit records not appended yet; kept in the outbox
AUDIT_TRIM_FAILED = "audit.trim_failed"  # WARNING: audit journal not trimmed; will retry
AUDIT_AFTER_COMMIT_FAILED = "audit.after_commit_failed"  # ERROR: after-commit hook failed
AUDIT_ROTATED = (
    "audit.rotated"  # INFO: audit trail rotated ([audit] max_bytes/max_age_days; ``previous_file``)
)
AUDIT_ROTATE_FAILED = "audit.rotate_failed"  # WARNING: audit trail not rotated (file cannot be renamed, e.g. open elsewhere on Windows); appending to it meanwhile, retried hourly; said once
AUDIT_PRUNED = (
    "audit.pruned"  # INFO: rotated audit files older than [audit] retention_days deleted (``files``)
)

# --- delivery: delivery to the EHR and the FHIR server
DELIVERY_LATE_ACK_SKIPPED = "delivery.late_ack_skipped"  # DEBUG: late ACK for a delivered message skipped
DELIVERY_STOPPING_MESSAGE_QUEUED = (
    "delivery.stopping_message_queued"  # INFO: sender stopping: message left queued
)
DELIVERY_STARTED = "delivery.started"  # INFO: sender started
DELIVERY_REMOVING_ACKNOWLEDGED = (
    "delivery.removing_acknowledged"  # INFO: removing messages the EHR acknowledged before the last stop
)
DELIVERY_UNEXPECTED_ERROR = "delivery.unexpected_error"  # ERROR: sender: unexpected error, continuing
DELIVERY_UNEXPECTED_ERROR_DETAIL = (
    "delivery.unexpected_error_detail"  # DEBUG: sender: unexpected error details
)
DELIVERY_STOPPED = "delivery.stopped"  # INFO: sender stopped
DELIVERY_DEAD_LETTERED = (
    "delivery.dead_lettered"  # WARNING: interface alert: message moved to the dead-letter table
)
DELIVERY_POISON_PROBE = (
    "delivery.poison_probe"  # INFO: trying the next message in place of one the receiver keeps failing
)
DELIVERY_FAILED = "delivery.failed"  # WARNING: delivery failed, will re-send
DELIVERY_FAILED_AGAIN = "delivery.failed_again"  # DEBUG: delivery failed again, will re-send
DELIVERY_RESUMED = "delivery.resumed"  # INFO: the EHR answers again after failures
DELIVERY_DELIVERED = "delivery.delivered"  # DEBUG: delivered
DELIVERY_NEGATIVE_ACK = "delivery.negative_ack"  # DEBUG: negative acknowledgement
DELIVERY_RECEIVER_ERROR = "delivery.receiver_error"  # WARNING: receiver answered with an error, will retry
DELIVERY_DUPLICATE_ACK = (
    "delivery.duplicate_ack"  # DEBUG: the same ACK again for a message already answered (counted)
)
DELIVERY_RECEIVER_REPLAYS = "delivery.receiver_replays"  # WARNING: the receiver answers again for messages it already acknowledged: it seems to replay a kept-open connection (``fix``: keep_connection_open = false)
DELIVERY_STRAY_ACK = "delivery.stray_ack"  # DEBUG: an ACK between messages for no message of ours
DELIVERY_STRAY_FRAME_UNREADABLE = (
    "delivery.stray_frame_unreadable"  # DEBUG: an unreadable frame between messages, dropped
)
DELIVERY_IDLE_FRAME_UNREADABLE = (
    "delivery.idle_frame_unreadable"  # DEBUG: an unreadable frame on an idle connection
)
DELIVERY_IDLE_ACK_UNMATCHED = (
    "delivery.idle_ack_unmatched"  # DEBUG: an ACK on an idle connection for no message that awaits one
)
DELIVERY_COMMITTED = (
    "delivery.committed"  # DEBUG: the receiver committed the message (CA); its application ACK is awaited
)
DELIVERY_AWAITING_RESTORED = "delivery.awaiting_restored"  # INFO: messages committed before the last stop still await their application ACK
DELIVERY_APP_ACK_ACCEPTED = (
    "delivery.app_ack_accepted"  # INFO: application ACK: the receiver processed the message
)
DELIVERY_APP_ACK_ERROR = "delivery.app_ack_error"  # INFO: application ACK: the receiver could not process a message it had committed (dead-lettered, alerted)
DELIVERY_APP_ACK_OVERDUE = "delivery.app_ack_overdue"  # WARNING: no application ACK within app_ack_timeout_seconds: the receiver has not said whether it processed the message (in status until it does)
DELIVERY_APP_ACK_ABANDONED = "delivery.app_ack_abandoned"  # INFO: an operator re-queued or dead-lettered a message awaiting its application ACK (``outbox retry``/``dead-letter``): no longer waited for
DELIVERY_APP_ACK_NONE_DUE = (
    "delivery.app_ack_none_due"  # DEBUG: no application error within the timeout: complete (MSH-16 ER)
)

# --- outbox: the outbox
OUTBOX_STORAGE_FAILING = "outbox.storage_failing"  # ERROR: outbox storage failing; backing off
OUTBOX_STORAGE_STILL_FAILING = "outbox.storage_still_failing"  # ERROR: outbox storage still failing
OUTBOX_STORAGE_FAILING_AGAIN = "outbox.storage_failing_again"  # DEBUG: outbox storage failing again
OUTBOX_STORAGE_USABLE = "outbox.storage_usable"  # INFO: outbox storage usable again
OUTBOX_DELIVERED_NOT_REMOVED = "outbox.delivered_not_removed"  # WARNING: delivered message not removed from the outbox yet; it will not be sent again
OUTBOX_DELIVERED_REMOVED = "outbox.delivered_removed"  # INFO: delivered message removed from the outbox
OUTBOX_DELIVERED_IN_MEMORY_ONLY = (
    "outbox.delivered_in_memory_only"  # WARNING: delivered message remembered in memory only
)
OUTBOX_BACKLOG_CHECK_FAILED = "outbox.backlog_check_failed"  # DEBUG: backlog check failed
OUTBOX_BACKLOG_GROWING = "outbox.backlog_growing"  # WARNING: outbox backlog growing
OUTBOX_BACKLOG_CLEARED = "outbox.backlog_cleared"  # INFO: outbox backlog cleared

# --- held: held readings
HELD_STORE_FAILING = "held.store_failing"  # ERROR: held-readings store failing
HELD_STORE_USABLE = "held.store_usable"  # INFO: held-readings store usable again
HELD_READING_UNREADABLE = (
    "held.reading_unreadable"  # WARNING: held reading unreadable; left in the store for inspection
)
HELD_STORE_UNUSABLE = "held.store_unusable"  # ERROR: held-readings store unusable; holding disabled
HELD_STORE_MOVED_ASIDE = (
    "held.store_moved_aside"  # WARNING: held-readings store damaged; moved aside, starting an empty one
)
HELD_UNTIL_CONFIRMED = "held.until_confirmed"  # INFO: reading held until the patient is confirmed
HELD_UNTIL_PATIENT = "held.until_patient"  # INFO: reading held until a patient is set
HELD_DROPPED = "held.dropped"  # WARNING: held readings dropped: no patient was set in time
HELD_DISCARDED = "held.discarded"  # INFO: held readings discarded
HELD_RELEASED = "held.released"  # INFO: held readings sent after a patient was set
HELD_RELEASED_UNBOUND = "held.released_unbound"  # INFO: held readings sent unbound
HELD_TIMES_CORRECTED = "held.times_corrected"  # INFO: hold times corrected after the clock went back

# --- patient: the room's patient
PATIENT_CONTEXT_FILE_UNREADABLE = (
    "patient.context_file_unreadable"  # ERROR: patient context file unreadable and not moved aside
)
PATIENT_CONTEXT_FILE_MOVED_ASIDE = "patient.context_file_moved_aside"  # WARNING: patient context file unreadable; moved aside, starting without a patient
PATIENT_SET = "patient.set"  # INFO: patient context set
PATIENT_CLEARED = "patient.cleared"  # INFO: patient context cleared
PATIENT_EXPIRED = "patient.expired"  # INFO: patient context expired
PATIENT_ACTIVITY_NOT_SAVED = (
    "patient.activity_not_saved"  # WARNING: patient context activity not saved; retrying
)
PATIENT_SCAN_NOT_USABLE = "patient.scan_not_usable"  # WARNING: wristband scan not usable
PATIENT_LISTENER_FAILED = "patient.listener_failed"  # EXCEPTION: A patient-change listener (clinician, review, series) failed; the change stands
PATIENT_SCANNED = "patient.scanned"  # INFO: wristband scanned

# --- clinician: who takes the vitals (issue #16)
CLINICIAN_SIGNED_IN = "clinician.signed_in"  # INFO: Clinician signed in (``channel``)
CLINICIAN_SIGNED_OUT = "clinician.signed_out"  # INFO: Clinician signed out (``channel``, ``reason``)
CLINICIAN_TIMED_OUT = (
    "clinician.timed_out"  # INFO: Clinician signed out after clinician_timeout_minutes without activity
)
CLINICIAN_CONTEXT_FILE_MOVED_ASIDE = "clinician.context_file_moved_aside"  # WARNING: Clinician context file unreadable; moved aside, nobody signed in
CLINICIAN_ACTIVITY_NOT_SAVED = (
    "clinician.activity_not_saved"  # WARNING: Clinician context activity not saved; retrying
)
CLINICIAN_BADGE_NOT_USABLE = (
    "clinician.badge_not_usable"  # WARNING: Staff badge scan not usable (audited as badge_rejected)
)
CLINICIAN_CONTEXT_FILE_UNREADABLE = (
    "clinician.context_file_unreadable"  # ERROR: Clinician context file unreadable and not moved aside
)
CLINICIAN_BADGE_IGNORED = (
    "clinician.badge_ignored"  # WARNING: Staff badge scanned but clinician review is not wired; ignored
)

# --- review: the clinician review list (issue #16)
REVIEW_WAITING = "review.waiting"  # INFO: Reading waiting for a clinician's review ([review] mode confirm)
REVIEW_RESUMED = (
    "review.resumed"  # INFO: Review messages interrupted by a restart were queued (same MSH-10 and bytes)
)
REVIEW_CORRECTED = "review.corrected"  # INFO: Reading corrected: re-sent with C
REVIEW_WRONG_PATIENT = (
    "review.wrong_patient"  # INFO: Reading posted as wrong patient (W); waits for the right one
)
REVIEW_MANUAL_SENT = "review.manual_sent"  # INFO: Manual entry sent on its own
REVIEW_MANUAL_ATTACHED = "review.manual_attached"  # INFO: Manual entry joins a reading waiting for review
REVIEW_NOT_LISTED = (
    "review.not_listed"  # ERROR: Sent reading not listed for review (it cannot be confirmed or corrected)
)
REVIEW_CONFIRMED = "review.confirmed"  # INFO: Reading confirmed: sent with F
REVIEW_REJECTED = "review.rejected"  # INFO: Reading rejected: not sent
REVIEW_REJECTED_SENT = "review.rejected_sent"  # INFO: Reading rejected after it was sent: posted as wrong (W)
REVIEW_REFILED = "review.refiled"  # INFO: Retracted reading filed to the patient now set
REVIEW_ITEM_UNREADABLE = "review.item_unreadable"  # WARNING: Review item unreadable; left in the store
REVIEW_FORGOTTEN = "review.forgotten"  # INFO: Settled review items older than keep_days forgotten
REVIEW_QUEUED = "review.queued"  # INFO: Reviewed message (F, C, W, refile) queued

# --- aobp: automated office blood pressure series (issue #16, a device's bp_protocol)
AOBP_STARTED = (
    "aobp.started"  # INFO: Automated office BP series started (``readings``, ``agent_starts_measurements``)
)
AOBP_COMPLETED = "aobp.completed"  # INFO: Automated office BP series complete: sending the mean
AOBP_READING = "aobp.reading"  # INFO: A reading joined the automated office BP series (``taken``, ``of``)
AOBP_MEASUREMENT_STARTED = "aobp.measurement_started"  # DEBUG: The agent started the series' next measurement
AOBP_START_FAILED = (
    "aobp.start_failed"  # WARNING: The series' next measurement could not be started (link down)
)
AOBP_ABANDONED = "aobp.abandoned"  # WARNING: Automated office BP series ended without a mean (``why``: patient change, late reading, cuff errors); its readings were sent

# --- lookup: patient lookup (PDQ)
LOOKUP_PENDING_UNREADABLE = (
    "lookup.pending_unreadable"  # WARNING: pending confirmation unreadable; none pending
)
LOOKUP_PENDING_FILE_UNREADABLE = (
    "lookup.pending_file_unreadable"  # WARNING: pending confirmation file unreadable; none pending
)
LOOKUP_STARTED = "lookup.started"  # INFO: patient lookup started
LOOKUP_ANSWERED = "lookup.answered"  # INFO: patient lookup answered
LOOKUP_CANDIDATE_UNUSABLE = (
    "lookup.candidate_unusable"  # WARNING: a patient in the EHR's answer cannot be used
)
LOOKUP_FAILED = "lookup.failed"  # WARNING: patient lookup failed
LOOKUP_INCREMENT_FAILED = "lookup.increment_failed"  # INFO: the PDQ supplier's next increment (DSC continuation) failed; the candidates received are shown, the EHR has more
LOOKUP_BOUND_UNVERIFIED = (
    "lookup.bound_unverified"  # WARNING: patient bound as typed, NOT verified against the EHR
)
LOOKUP_CONFIRMED = "lookup.confirmed"  # INFO: patient confirmed against the EHR
LOOKUP_ENDED = "lookup.ended"  # INFO: patient confirmation ended

# --- control: the control API and the status page
CONTROL_REQUEST_FAILED = "control.request_failed"  # ERROR/EXCEPTION: control API request failed
CONTROL_LOGIN_CODE_ISSUED = "control.login_code_issued"  # INFO: status page login code issued
CONTROL_LOGIN_REFUSED = (
    "control.login_refused"  # INFO: status page login refused: code unknown, used or expired
)
CONTROL_LOGIN = "control.login"  # INFO: status page login
CONTROL_REQUEST_REFUSED = "control.request_refused"  # INFO: control API request refused: no valid token
CONTROL_LISTENING = "control.listening"  # INFO: control API listening
CONTROL_ACCEPT_FAILED = "control.accept_failed"  # WARNING: control API cannot accept a connection
CONTROL_BUSY = "control.busy"  # WARNING: control API busy: connections over the cap are refused
CONTROL_NOT_STOPPED = "control.not_stopped"  # WARNING: control API did not stop in time

# --- hl7: the HL7 builder
HL7_BIRTH_DATE_IGNORED = "hl7.birth_date_ignored"  # DEBUG: birth date ignored: not YYYYMMDD
HL7_SEX_IGNORED = "hl7.sex_ignored"  # DEBUG: administrative sex ignored: not in table 0001
HL7_UNIT_PREFERENCE_NOT_APPLICABLE = (
    "hl7.unit_preference_not_applicable"  # DEBUG: unit preference not applicable
)
HL7_NON_FINITE_VALUE = "hl7.non_finite_value"  # WARNING: non-finite value not sent

# --- fhir: FHIR link
FHIR_HTTP_TLS_FILES_UNUSED = (
    "fhir.http_tls_files_unused"  # WARNING: fhir base_url is http://: ca_file and cert_file are not used
)
FHIR_TOKEN_URL_UNENCRYPTED = "fhir.token_url_unencrypted"  # WARNING: fhir token_url is http://: the client assertion and token travel unencrypted
FHIR_BASE_URL_UNENCRYPTED = (
    "fhir.base_url_unencrypted"  # WARNING: fhir base_url is http://: the bearer token travels unencrypted
)

# --- pdq: PDQ link
PDQ_BASE_URL_UNENCRYPTED = "pdq.base_url_unencrypted"  # WARNING: pdq base_url is http://: the bearer token and client certificate travel unencrypted

# --- mllp: MLLP link
MLLP_CONNECTED = "mllp.connected"  # DEBUG: an MLLP connection to the EHR is open
MLLP_PEER_CLOSED_IDLE = "mllp.peer_closed_idle"  # DEBUG: mllp peer closed idle connection, reconnecting

# --- receiver: the built-in MLLP receiver
RECEIVER_NOT_MLLP = "receiver.not_mllp"  # WARNING: receiver: not an MLLP frame, closing
RECEIVER_ANSWER_FAILED = "receiver.answer_failed"  # ERROR: receiver: answer failed; sending a plain ACK
RECEIVER_ON_MESSAGE_FAILED = "receiver.on_message_failed"  # ERROR: receiver: on_message failed
RECEIVER_LISTENING = "receiver.listening"  # INFO: the built-in MLLP receiver listens (``port``)
RECEIVER_UNPARSABLE = "receiver.unparsable"  # DEBUG: received message could not be parsed

# --- delivery (continued): the inbound port for application ACKs ([ehr] app_ack_port)
DELIVERY_APP_ACK_LISTENING = "delivery.app_ack_listening"  # INFO: listening for application ACKs
DELIVERY_APP_ACK_CONNECTION_ENDED = (
    "delivery.app_ack_connection_ended"  # DEBUG: an application-ACK connection ended
)
DELIVERY_APP_ACK_NOT_AN_ACK = "delivery.app_ack_not_an_ack"  # INFO: the application-ACK port got a frame that is not an ACK (answered CR)
DELIVERY_APP_ACK_UNMATCHED = (
    "delivery.app_ack_unmatched"  # INFO: an application ACK for no message that awaits one
)

# --- tls: TLS
TLS_OFF_FILES_IGNORED = (
    "tls.off_files_ignored"  # WARNING: ``[section] tls`` is off: its TLS file settings are ignored
)
TLS_VERIFY_OFF = (
    "tls.verify_off"  # WARNING: ``[section] tls_verify`` is off: the peer's certificate is NOT checked
)

# --- alert: the IT team's alerts
ALERT_FIRING = (
    "alert.firing"  # WARNING: an alert fired (``alert``, ``room``, ``device``, ``summary``, ``counts``)
)
ALERT_CLEARED = "alert.cleared"  # WARNING: an alert cleared
ALERT_CHECK_FAILED = "alert.check_failed"  # EXCEPTION: alert check failed; continuing
ALERT_CHANNEL_BACKLOG_FULL = (
    "alert.channel_backlog_full"  # WARNING: alert channel backlog full: oldest alert dropped
)
ALERT_DELIVERY_GIVEN_UP = "alert.delivery_given_up"  # WARNING: alert not delivered, given up
ALERT_DELIVERY_FAILED = "alert.delivery_failed"  # WARNING: alert not delivered, will retry
ALERT_CHANNEL_FAILED = "alert.channel_failed"  # ERROR: alert channel failed
ALERT_CERTIFICATE_UNREADABLE = "alert.certificate_unreadable"  # DEBUG: certificate not read for its expiry

# --- metrics: the Prometheus listener
METRICS_LISTENING = "metrics.listening"  # INFO: metrics listener started
METRICS_CLIENT_REFUSED = "metrics.client_refused"  # DEBUG: metrics client refused

# --- config: the central configuration and reloads
CONFIG_LAST_GOOD_UNUSABLE = "config.last_good_unusable"  # WARNING: last good central configuration not usable
CONFIG_LAST_GOOD_MISMATCH = (
    "config.last_good_mismatch"  # WARNING: last good central configuration does not fit the local file
)
CONFIG_RELOAD_FAILED = (
    "config.reload_failed"  # EXCEPTION: configuration reload failed; the configuration in force stays
)
CONFIG_REFUSED = "config.refused"  # WARNING: new configuration refused; the configuration in force stays
CONFIG_APPLIED = "config.applied"  # INFO: configuration applied
CONFIG_RESTART_NEEDED = (
    "config.restart_needed"  # WARNING: some changes apply at the next restart of the agent (``keys``)
)
CONFIG_CENTRAL_UNAVAILABLE = (
    "config.central_unavailable"  # WARNING: starting without a new central configuration (``using``)
)
