"""The people in the room: the patient's context and held readings (context.py), lookup then confirm
against the EHR (lookup.py), the signed-in clinician (clinician.py) and the clinician's review list of the
readings: confirm, reject, correct, wrong patient, manual entries (review.py)."""
