"""`robopol bench ...`: speed measurements that print a table and write JSON (never asserted in tests)."""
