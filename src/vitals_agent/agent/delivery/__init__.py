"""Delivery: one sender loop per destination (sender.py), its pure policy (policy.py), and the links it
drives (MLLP in sender.py, FHIR in fhir_sender.py)."""
