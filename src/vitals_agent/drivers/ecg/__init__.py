"""EKG carts: SCP-ECG, HL7 aECG and Philips Sierra XML files (devices.md section 7).

Pure decoders (``scp``, ``aecg``, ``philips``) turn one file's bytes into one
:class:`~vitals_agent.models.Reading`; ``drivers`` registers them; ``folder`` and ``serial_file`` are the
transports that deliver the files; ``render`` draws an aECG file's 12 leads on a standard ECG grid.
"""
