"""The room's patient: context and held readings (context.py), lookup then confirm against the EHR
(lookup.py)."""
