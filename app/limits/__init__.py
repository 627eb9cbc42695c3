"""Per-key limits: requests, tokens and streams per key, and spend budgets, in memory or in Redis."""
