"""The data path after decoding: normalise, reporting policy, patient routing, build, commit (flow.py)."""
