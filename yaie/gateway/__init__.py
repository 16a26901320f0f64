"""The gateway: API keys, rate limits, budgets and the cost ledger, PII redaction, the audit log, retention and
erasure, in front of the OpenAI server (auth -> limit -> redact -> route -> record). Off unless configured."""
