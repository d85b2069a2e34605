"""Persistence: tables, engine set-up and the one write path (``repository``)."""
