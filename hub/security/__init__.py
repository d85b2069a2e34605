"""Authorization (SMART Backend Services, scopes) and the audit trail."""
