"""Subscriptions (R4 and topic-based Backport) and practice workflows, driven by the outbox."""
