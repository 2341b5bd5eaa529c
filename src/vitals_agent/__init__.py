"""vitals-agent: exam-room medical-device integration agent (devices -> IHE PCD-01 ORU^R01 over MLLP)."""

__version__ = "0.1.0"
