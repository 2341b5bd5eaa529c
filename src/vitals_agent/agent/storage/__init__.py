"""The agent's durable stores: the outbox (+ its ledger of acknowledged messages), the audit trail, and
what a storage failure means (files.py)."""
