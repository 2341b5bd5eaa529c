"""Network links to the EHR: the MLLP client, the built-in MLLP receiver (the python-hl7 adapter).

The message builders beside this package (:mod:`vitals_agent.hl7`, :mod:`vitals_agent.fhir`) are pure; the
sockets, TLS and the event loop live here, and the agent's delivery wires the two together.
"""
