"""FHIR R4 output: the pure transaction-Bundle builder (``bundle``) and its JSON writer (``wire``)."""
